"""The HTML report (loadmaster/html_report.py: render_html) of real result files.

The documents come from real runs on loopback (`loadmaster run --out`, the embedded agent
and its workers, examples/target_server.py as the target), checked against the schema;
a few tests edit a copy (more names, agents, seconds) where one run cannot give it. The
page is read here as a browser without JavaScript would: tables from the HTML itself.
tests/test_html_report_browser.py draws the charts in a real Chromium.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from loadmaster.html_report import render_html
from loadmaster.result import decode_histogram
from protocol.histogram import Histogram
from tests.e2e_helpers import (
    ROOT,
    Target,
    free_port,
    kill_tagged,
    new_tag,
    run_master,
    wait_no_tagged,
    write_job,
)
from tests.test_http_figures_e2e import MIXED_CLIENT
from tests.test_result_file import load_result
from tests.test_result_open import OPEN, open_job

UPLOT = ROOT / "loadmaster" / "dash" / "vendor" / "uplot"
# markup that would run script or load something if it reached the page unescaped
HOSTILE = ("</script><script>document.title='pwned'</script>"
           "<img src=x onerror=\"document.title='pwned'\">")
HOSTILE_CLIENT = f'''
import asyncio
from protocol import ClientProtocol

class Hostile(ClientProtocol):
    name = {HOSTILE!r}

    async def execute(self):
        await asyncio.sleep(0.01)
        raise ValueError({HOSTILE!r} + " & <b>bold</b>")
'''
# the charts of a real run with one name and one agent, in the page's order
ONE_NAME_CHARTS = ["chart-rps", "chart-clients", "chart-latency", "chart-distribution",
                   "chart-latency-vs-rps", "chart-agents", "chart-agents-cpu"]
FAIL_ONLY_CHARTS = ["chart-rps", "chart-clients", "chart-agents", "chart-agents-cpu"]
# the open model's: its corrected, service and lag p99 over time after the response time
OPEN_CHARTS = [*ONE_NAME_CHARTS[:3], "chart-open", *ONE_NAME_CHARTS[3:]]


# -- the runs (one of each per module: a run takes seconds) ----------------------------
@pytest.fixture(scope="module")
def module_tag() -> Iterator[str]:
    """As conftest's `tag`, for the runs the tests of a module share."""
    t = new_tag()
    yield t
    leftover = wait_no_tagged(t, timeout=15)
    kill_tagged(t)
    assert not leftover, f"processes left running after the module: {leftover}"


def run_doc(workdir: Path, tag: str, conf: dict[str, Any], client: str, *args: str,
            code: int = 0) -> dict[str, Any]:
    """The result file of a real `loadmaster run --out`, checked against the schema."""
    path = write_job(workdir, conf, client=client, client_path="client.py")
    out = workdir / "result.json"
    r = run_master(workdir, path, tag, "--out", str(out), *args)
    assert r.code == code, r.stderr
    return load_result(out)


@pytest.fixture(scope="module")
def http_doc(tmp_path_factory: pytest.TempPathFactory, module_tag: str) -> dict[str, Any]:
    """The built-in HTTP client against the target: every third call a 404 (a failure)."""
    target = Target(module_tag)
    try:
        return run_doc(tmp_path_factory.mktemp("http"), module_tag,
                       {"host": target.url, "users": 4, "hatch_rate": 4, "run_time": 2,
                        "worker": 2, "wait_time": 0.01}, MIXED_CLIENT)
    finally:
        target.stop()


@pytest.fixture(scope="module")
def fail_only_doc(tmp_path_factory: pytest.TempPathFactory,
                  module_tag: str) -> dict[str, Any]:
    """Every call fails; the name, the error and a custom value are markup."""
    return run_doc(tmp_path_factory.mktemp("hostile"), module_tag,
                   {"host": "http://127.0.0.1:1/", "users": 2, "hatch_rate": 10,
                    "run_time": 2, "worker": 1, "wait_time": 0.01, "motto": HOSTILE},
                   HOSTILE_CLIENT)


@pytest.fixture(scope="module")
def failed_doc(tmp_path_factory: pytest.TempPathFactory, module_tag: str) -> dict[str, Any]:
    """A run that failed before its load: the agent it waited for never came."""
    return run_doc(tmp_path_factory.mktemp("failed"), module_tag,
                   {"host": "http://127.0.0.1:1/", "users": 2, "run_time": 1,
                    "agent_timeout": 1}, HOSTILE_CLIENT,
                   "--agents", "1", "--bind", f"127.0.0.1:{free_port()}", code=4)


@pytest.fixture(scope="module")
def open_doc(tmp_path_factory: pytest.TempPathFactory, module_tag: str) -> dict[str, Any]:
    """The open model falling behind (tests/test_result_open.py's run): 100 calls a
    second asked of two clients, the target answering in 50 ms."""
    target = Target(module_tag, delay_ms=50)
    try:
        folder = tmp_path_factory.mktemp("open")
        conf = open_job(folder, {"host": target.url, **OPEN})
        r = run_master(folder, conf, module_tag, "--out", str(folder / "result.json"),
                       timeout=120)
        assert r.code == 0, r.stderr
        return load_result(folder / "result.json")
    finally:
        target.stop()


# -- edited copies ----------------------------------------------------------------------
def slower(hist: dict[str, list[int]], shift: int) -> dict[str, list[int]]:
    """The same counts ``shift`` buckets up (128 buckets: twice the latency)."""
    if not hist["i"]:
        return hist
    return {"i": [hist["i"][0] + shift, *hist["i"][1:]], "c": list(hist["c"])}


def with_more(doc: dict[str, Any], name: str, agent: str) -> dict[str, Any]:
    """A copy of a one-name, one-agent doc with a second name (twice as slow) and a
    second agent, both copies of the first."""
    out = copy.deepcopy(doc)
    (first,) = doc["totals"]["names"]
    out["totals"]["names"][name] = {**doc["totals"]["names"][first],
                                    "hist": slower(doc["totals"]["names"][first]["hist"], 128)}
    s = doc["series"]["names"][first]
    out["series"]["names"][name] = {**s, "hist": [slower(h, 128) for h in s["hist"]]}
    out["agents"].append({**doc["agents"][0], "name": agent, "saturated": True})
    (a,) = doc["series"]["agents"]
    out["series"]["agents"][agent] = doc["series"]["agents"][a]
    return out


def longer(doc: dict[str, Any], seconds: int, names: int) -> dict[str, Any]:
    """A copy whose series repeats the run's to ``seconds`` seconds, over ``names`` names."""
    out = copy.deepcopy(doc)
    s = doc["series"]
    times = -(-seconds // s["seconds"])
    out["series"] = {
        "seconds": s["seconds"] * times,
        **{k: s[k] * times for k in ("clients", "ok", "fail")},
        "names": {f"name-{k}": {f: None if v is None else v * times for f, v in one.items()}
                  for one in s["names"].values() for k in range(names)},
        "agents": {a: {f: v * times for f, v in one.items()}
                   for a, one in s["agents"].items()},
    }
    (first,) = doc["totals"]["names"].values()
    out["totals"]["names"] = {f"name-{k}": first for k in range(names)}
    return out


# -- reading the page -------------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Page(HTMLParser):
    """The page as markup: each id'd element's text, each id'd table's rows, the tags."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._open: list[tuple[str, str | None]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        ident = a.get("id")
        if tag == "table" and ident:
            self._table = ident
            self.tables[ident] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        if tag not in VOID:
            self._open.append((tag, ident))
            if ident:
                self.text[ident] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.text[ident] += data
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table_id: str) -> list[dict[str, str]]:
        """A table's body rows by its header's column names."""
        head, *body = self.tables[table_id]
        return [dict(zip(head, row, strict=True)) for row in body]

    def data(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.text["report-data"])
        return found

    def charts(self) -> dict[str, dict[str, Any]]:
        return {c["id"]: c for c in self.data()["charts"]}


def series_of(chart: dict[str, Any]) -> dict[str, list[Any]]:
    return {s["label"]: s["values"] for s in chart["series"]}


def ms(ns: int | None) -> float | None:
    """A figure of the charts' data: milliseconds to 3 decimals."""
    return None if ns is None else round(ns / 1e6, 3)


def shown_ms(ns: float) -> str:
    """Milliseconds as the final block shows them: 3 decimals below 10 ms, then 1."""
    return f"{ns / 1e6:.3f}" if ns < 10e6 else f"{ns / 1e6:.1f}"


# -- tests ------------------------------------------------------------------------------
def test_the_page_loads_nothing_from_anywhere_and_inlines_uplot(
        http_doc: dict[str, Any]) -> None:
    text = render_html(http_doc)
    page = Page(text)
    for tag, attrs in page.tags:
        for attr in ("src", "href", "action", "data"):
            value = attrs.get(attr)
            assert value is None or value.startswith("data:"), (tag, attrs)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text)
    # the target's URL is on the page, as text only (the config and the error message)
    assert "http://127.0.0.1" in page.text["config"]
    assert "uPlot 1.6.32 (c) 2022 Leon Sorokin, MIT license" in text
    assert (UPLOT / "uPlot.iife.min.js").read_text() in text
    assert (UPLOT / "uPlot.min.css").read_text() in text
    # the policy lets exactly the page's own scripts run, and nothing load
    (csp,) = [a["content"] for t, a in page.tags
              if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp is not None and csp.startswith("default-src 'none'; ")
    scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
    assert len(scripts) == 3
    for script in scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert render_html(http_doc) == text  # deterministic
    assert render_html(json.loads(json.dumps(http_doc))) == text


def test_the_tables_show_the_final_block_of_the_run(http_doc: dict[str, Any]) -> None:
    page = Page(render_html(http_doc))
    all_ = http_doc["totals"]["all"]
    assert all_["ok"] > 50 and all_["fail"] > 20
    assert page.text["total-ok"] == str(all_["ok"])
    assert page.text["total-fail"] == str(all_["fail"])
    assert page.text["total-rps"] == f"{all_['rps']:.2f}"
    assert page.text["total-run-time"] == f"{http_doc['run_time']:.3f} s"
    assert page.text["total-users"] == "4"
    assert page.text["total-accuracy"] == f"{100 * all_['ok'] / (all_['ok'] + all_['fail']):.2f}%"
    assert page.text["total-p99"] == f"{shown_ms(all_['p99_ns'])} ms"
    assert page.text["run-id"] == http_doc["run_id"]
    assert page.text["exit-code"] == "0 (ok)"
    assert "incomplete" not in page.text
    assert page.text["start"].endswith(" UTC")
    (name,) = page.rows("table-names")
    assert (name["name"], name["success"], name["fail"]) == \
        ("mixed", str(all_["ok"]), str(all_["fail"]))
    assert name["p90 ms"] == shown_ms(all_["p90_ns"])
    (statuses,) = page.rows("table-statuses")
    assert (statuses["200"], statuses["404"]) == (str(all_["ok"]), str(all_["fail"]))
    assert statuses["sent"].endswith("KiB") and statuses["received"].endswith("KiB")
    (error,) = page.rows("table-errors")
    assert (error["count"], error["type"]) == (str(all_["fail"]), "HttpStatusError")
    assert error["message"] == http_doc["errors"][0]["message"]
    (agent,) = page.rows("table-agents")
    assert (agent["name"], agent["workers"], agent["clients"], agent["success"]) == \
        ("local", "2", "4", str(all_["ok"]))
    assert agent["generator"] == "ok" and agent["state"] == "ok"
    assert page.text["stop-grace"].startswith("stop grace: ")
    assert json.loads(page.text["config"]) == http_doc["config"]
    assert json.loads(page.text["custom"]) == http_doc["custom"]
    assert [c["id"] for c in page.data()["charts"]] == ONE_NAME_CHARTS
    # the closed model: nothing of the open one
    assert "table-open" not in page.tables and "open-model" not in page.text
    assert "total-late" not in page.text and "total-arrival-rate" not in page.text


def test_the_charts_hold_the_series_and_its_per_second_percentiles(
        http_doc: dict[str, Any]) -> None:
    doc = with_more(http_doc, "slower", "agent-2")
    charts = Page(render_html(doc)).charts()
    series = doc["series"]
    n = series["seconds"]
    assert n >= 2 and charts["chart-rps"]["x"] is None  # the seconds 1..n
    assert series_of(charts["chart-rps"]) == {"ok/s": series["ok"], "fail/s": series["fail"]}
    assert series_of(charts["chart-clients"]) == {"clients": series["clients"]}
    # every name merged per second, as protocol.histogram computes a percentile
    expected: dict[str, list[float | None]] = {"p50": [], "p90": [], "p99": []}
    for k in range(n):
        merged: dict[int, int] = {}
        for one in series["names"].values():
            for i, c in decode_histogram(one["hist"][k]).items():
                merged[i] = merged.get(i, 0) + c
        for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            expected[label].append(ms(Histogram(merged).percentile(q)))
    assert series_of(charts["chart-latency"]) == expected
    assert any(v is not None for v in expected["p99"])
    per_name = series_of(charts["chart-latency-names"])
    assert per_name["slower p50"] == [
        ms(Histogram(decode_histogram(h)).percentile(0.5))
        for h in series["names"]["slower"]["hist"]]
    assert set(per_name) == {"mixed p50", "mixed p99", "slower p50", "slower p99"}
    # one point per second with a success
    scatter = charts["chart-latency-vs-rps"]
    points = sorted((ok, k) for k, ok in enumerate(series["ok"]) if ok > 0)
    assert scatter["x"] == [ok for ok, _ in points]
    assert series_of(scatter)["p99"] == [expected["p99"][k] for _, k in points]
    # the distribution: every bucket of the totals, in order, adding up to the successes
    dist = series_of(charts["chart-distribution"])
    assert sum(dist["calls"]) == doc["totals"]["all"]["ok"]
    assert dist["% at or below"][-1] == 100
    assert charts["chart-distribution"]["x"] == sorted(charts["chart-distribution"]["x"])
    agents = series_of(charts["chart-agents"])
    assert agents == {"local": series["agents"]["local"]["ok"],
                      "agent-2": series["agents"]["local"]["ok"]}
    cpu = series_of(charts["chart-agents-cpu"])["local"]
    a = series["agents"]["local"]
    assert cpu == [None if span == 0 else round(100 * used / span, 1)
                   for used, span in zip(a["cpu_seconds"], a["cpu_span"], strict=True)]


def test_several_names_and_agents_get_a_row_each(http_doc: dict[str, Any]) -> None:
    page = Page(render_html(with_more(http_doc, "slower", "agent-2")))
    assert [r["name"] for r in page.rows("table-names")] == ["mixed", "slower"]
    assert [r["name"] for r in page.rows("table-statuses")] == ["mixed", "slower",
                                                                "(every name)"]
    agents = page.rows("table-agents")
    assert [(r["name"], r["generator"]) for r in agents] == [("local", "ok"),
                                                             ("agent-2", "SATURATED")]
    assert [c["id"] for c in page.data()["charts"]] == [
        *ONE_NAME_CHARTS[:3], "chart-latency-names", *ONE_NAME_CHARTS[3:]]


def test_markup_in_names_errors_and_config_is_shown_as_text(
        fail_only_doc: dict[str, Any], http_doc: dict[str, Any]) -> None:
    assert fail_only_doc["custom"]["motto"] == HOSTILE
    assert fail_only_doc["errors"][0]["name"] == HOSTILE  # the real run's, as it wrote it
    doc = with_more(http_doc, HOSTILE, HOSTILE)  # in the tables and the charts' labels
    doc["errors"], doc["custom"] = fail_only_doc["errors"], fail_only_doc["custom"]
    doc["notes"].append(HOSTILE)
    doc["incomplete"] = True  # its marker, beside the markup
    text = render_html(doc)
    assert HOSTILE not in text and "<img" not in text
    assert text.count("<script") == 4  # errors.js, the data, uPlot, report.js
    page = Page(text)
    assert [r["name"] for r in page.rows("table-names")] == ["mixed", HOSTILE]
    (error,) = page.rows("table-errors")
    assert error["message"] == HOSTILE + " & <b>bold</b>"
    assert error["name"] == HOSTILE and error["type"] == "ValueError"
    assert page.rows("table-agents")[1]["name"] == HOSTILE
    assert HOSTILE in page.text["notes"]
    assert json.loads(page.text["custom"])["motto"] == HOSTILE
    assert page.text["incomplete"] == "INCOMPLETE"
    start = text.index('id="report-data">') + len('id="report-data">')
    assert not set("<>&") & set(text[start:text.index("</script>", start)])
    labels = [s["label"] for s in page.charts()["chart-latency-names"]["series"]]
    assert f"{HOSTILE} p50" in labels
    assert HOSTILE in series_of(page.charts()["chart-agents"])  # by the agent's name


def test_a_run_where_every_call_fails_has_no_response_times(
        fail_only_doc: dict[str, Any]) -> None:
    page = Page(render_html(fail_only_doc))
    all_ = fail_only_doc["totals"]["all"]
    assert all_["ok"] == 0 and all_["fail"] > 10 and all_["p50_ns"] is None
    assert (page.text["total-ok"], page.text["total-fail"]) == ("0", str(all_["fail"]))
    assert (page.text["total-p50"], page.text["total-max"]) == ("-", "-")
    assert page.text["total-accuracy"] == "0.00%"
    assert [c["id"] for c in page.data()["charts"]] == FAIL_ONLY_CHARTS
    assert "no successful call" in page.text["charts-notes"]
    assert "no HTTP figures" in page.text["no-statuses"]
    assert page.rows("table-names")[0]["name"] == HOSTILE


def test_a_run_that_failed_before_its_load_shows_what_exists(
        failed_doc: dict[str, Any]) -> None:
    assert failed_doc["totals"] is None and failed_doc["series"]["seconds"] == 0
    text = render_html(failed_doc)
    page = Page(text)
    assert page.text["run-error"] == failed_doc["error"]
    assert page.text["run-error"].startswith("only 0 of 1 agent(s) registered")
    assert page.text["exit-code"] == "4 (not enough agents)"
    assert page.text["incomplete"] == "INCOMPLETE"
    assert "No figures" in page.text["no-figures"]
    assert "total-ok" not in page.text and "table-names" not in page.tables
    assert page.data() == {"seconds": 0, "charts": []}
    assert "the load never started" in page.text["charts-notes"]
    assert "no agent registered" in page.text["no-agents"]
    assert json.loads(page.text["config"])["agents"] == 1
    assert render_html(failed_doc) == text


def test_totals_without_seconds_still_draw_the_distribution(http_doc: dict[str, Any]) -> None:
    doc = copy.deepcopy(http_doc)
    doc["series"] = {"seconds": 0, "clients": [], "ok": [], "fail": [], "names": {},
                     "agents": {}}
    page = Page(render_html(doc))
    assert [c["id"] for c in page.data()["charts"]] == ["chart-distribution"]
    assert page.text["total-ok"] == str(doc["totals"]["all"]["ok"])


def test_an_hour_of_ten_names_renders_every_second(http_doc: dict[str, Any]) -> None:
    doc = longer(http_doc, 3600, 10)
    n = doc["series"]["seconds"]
    assert n >= 3600
    text = render_html(doc)
    charts = Page(text).charts()
    assert Page(text).data()["seconds"] == n
    for label, values in series_of(charts["chart-latency-names"]).items():
        assert len(values) == n, label
    assert len(series_of(charts["chart-latency"])["p99"]) == n
    assert len(text) < 10 << 20  # compact: rounded figures, no per-bucket data per second


def trio_ms(latency: dict[str, Any]) -> str:
    """p50 / p90 / p99 as the final block shows them."""
    return " / ".join(f"{shown_ms(latency[k])} ms" for k in ("p50_ns", "p90_ns", "p99_ns"))


def per_second_p99(hists: list[dict[str, list[int]]]) -> list[float | None]:
    return [ms(Histogram(decode_histogram(h)).percentile(0.99)) for h in hists]


def test_the_open_model_shows_its_schedule_late_dropped_service_and_lag(
        open_doc: dict[str, Any]) -> None:
    page = Page(render_html(open_doc))
    all_ = open_doc["totals"]["all"]
    sched = all_["open"]
    assert sched["late"] > 0 and sched["dropped"] > 0  # the run fell behind
    # the final block's lines, in the totals
    assert page.text["total-users"] == f"{open_doc['users']} (pool of at most 2)"
    assert page.text["total-arrival-rate"] == "100/s (uniform)"
    assert page.text["total-scheduled"] == str(sched["scheduled"]) == "400"
    assert page.text["total-started"] == \
        f"{(all_['ok'] + all_['fail']) / open_doc['run_time']:.2f}"
    assert page.text["total-late"].startswith(f"{sched['late']} (started over 10 ms")
    assert page.text["total-dropped"] == f"{sched['dropped']} (never started)"
    assert page.text["total-service"] == trio_ms(sched["service"])
    assert page.text["total-lag"] == trio_ms(sched["lag"])
    assert page.text["schedule"].startswith("calls started on a schedule of 100/s (uniform)")
    # the table per name: one name, whose figures are the run's
    (row,) = page.rows("table-open")
    assert row == {
        "name": "HttpFast", "scheduled": "400", "late": str(sched["late"]),
        "dropped": str(sched["dropped"]),
        **{f"{label}{p} ms": shown_ms(figures[f"{p}_ns"])
           for label, figures in (("", all_), ("service ", sched["service"]),
                                  ("lag ", sched["lag"]))
           for p in ("p50", "p90", "p99")}}
    # one chart more: p99 per second of the three latencies
    charts = page.charts()
    assert list(charts) == OPEN_CHARTS
    lines = series_of(charts["chart-open"])
    one = open_doc["series"]["names"]["HttpFast"]
    assert lines == {
        "response time p99": series_of(charts["chart-latency"])["p99"],
        "service time p99": per_second_p99(one["service_hist"]),
        "schedule lag p99": per_second_p99(one["lag_hist"])}
    assert lines["response time p99"] == per_second_p99(one["hist"])
    assert any(v is not None and v > 50 for v in lines["schedule lag p99"])
    # the late and dropped calls of each second, beside ok and fail
    rates = series_of(charts["chart-rps"])
    assert rates["late/s"] == open_doc["series"]["late"]
    assert rates["dropped/s"] == open_doc["series"]["dropped"]
    assert sum(rates["dropped/s"]) == sched["dropped"]


def test_the_open_models_table_has_a_row_per_name_and_keeps_markup_as_text(
        open_doc: dict[str, Any]) -> None:
    doc = with_more(open_doc, HOSTILE, "agent-2")
    text = render_html(doc)
    assert HOSTILE not in text and "<img" not in text
    page = Page(text)
    rows = page.rows("table-open")
    assert [r["name"] for r in rows] == ["HttpFast", HOSTILE, "(every name)"]
    assert rows[2]["scheduled"] == str(doc["totals"]["all"]["open"]["scheduled"])
    labels = [s["label"] for s in page.charts()["chart-open"]["series"]]
    assert labels == ["response time p99", "service time p99", "schedule lag p99"]
