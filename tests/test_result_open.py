"""The open model in the files a run leaves: the result file, `loadmaster report` from
it, the JSON summary, `loadmaster compare`; and result files written before the open
model, which must still load.

One real run on loopback (the embedded agent, one worker, examples/target_server.py
answering in 50 ms): 100 calls a second asked of a pool of two clients, which start
about 38, so most calls start late and those not started within max_schedule_lag are
dropped. A short closed-model run gives the file of the older shape. The HTML report's
open-model checks are in tests/test_html_report*.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from loadmaster.console import format_final
from loadmaster.html_report import render_html
from loadmaster.result import decode_histogram
from loadmaster.resultfile import ReportInputError, check_result, final_view
from loadmaster.summary import summarize
from tests.e2e_helpers import (
    ROOT,
    Result,
    Target,
    kill_tagged,
    new_tag,
    run_master,
    tagged_env,
    wait_no_tagged,
    write_job,
)
from tests.test_result_file import load_result

SUMMARY_SCHEMA = json.loads((ROOT / "loadmaster" / "schemas" / "summary-schema.json")
                            .read_text())
RATE = 100  # calls a second asked for
RUN_TIME = 4
DELAY_MS = 50  # the target's answer time: two clients start at most ~38 calls a second
OPEN = {"arrival_rate": RATE, "run_time": RUN_TIME, "worker": 1, "max_users": 2,
        "pre_allocated_users": 2, "max_schedule_lag": 0.5}
NAME = "HttpFast"  # examples/http_fast.py's client
# the fields the open model added to the result file, where they are
TOP_OPEN = ("schedule",)
SERIES_OPEN = ("late", "dropped")
NAME_SERIES_OPEN = ("late", "dropped", "service_hist", "lag_hist")


def open_job(folder: Path, conf: dict[str, Any]) -> Path:
    """examples/http_fast.py and a config of the open model in ``folder`` (no key of the
    closed model: not even wait_time)."""
    (folder / "client.py").write_text((ROOT / "examples" / "http_fast.py").read_text())
    path = folder / "open.yml"
    path.write_text(yaml.safe_dump({"benchmark_class_file": "./client.py",
                                    "print_interval": 1, "enable_dash": False, **conf}))
    return path


@dataclass
class Run:
    folder: Path
    result: Result

    def doc(self) -> dict[str, Any]:
        return load_result(self.folder / "result.json")

    def file(self, name: str) -> Path:
        return self.folder / name

    def count(self, label: str) -> int:
        """A count of the final block: '1,234 (never started)' -> 1234."""
        return int(self.result.final()[label].split()[0].replace(",", ""))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """"open": the open model falling behind, with every output; "closed": two seconds
    of the closed model, with its result file."""
    tag = new_tag()
    target = Target(tag, delay_ms=DELAY_MS)
    out: dict[str, Run] = {}
    try:
        folder = tmp_path_factory.mktemp("open")
        conf = open_job(folder, {"host": target.url, **OPEN})
        out["open"] = Run(folder, run_master(
            folder, conf, tag, "--out", "result.json", "--html", "report.html", "--json",
            "summary.json", "--csv", "run", timeout=120))
        folder = tmp_path_factory.mktemp("closed")
        conf = write_job(folder, {"host": target.url, "users": 2, "hatch_rate": 100,
                                  "run_time": 2, "worker": 1})
        out["closed"] = Run(folder, run_master(folder, conf, tag, "--out", "result.json"))
        yield out
    finally:
        target.stop()
        leftover = wait_no_tagged(tag, timeout=15)
        kill_tagged(tag)
        assert not leftover, f"processes left running: {leftover}"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadmaster", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env=tagged_env("result-open-cli"), stdin=subprocess.DEVNULL)


def final_block(stdout: str) -> str:
    """The final block as printed, from its rule to the end of the output."""
    i = stdout.rfind("final benchmark:")
    assert i >= 0, stdout
    return stdout[stdout.rfind("=" * 40, 0, i):].rstrip("\n")


def shown(ns: int | None) -> str:
    """A latency as the final block prints it."""
    if ns is None:
        return "-"
    return f"{ns / 1e6:.3f} ms" if ns < 10e6 else f"{ns / 1e6:.1f} ms"


def trio(latency: dict[str, Any]) -> str:
    return " / ".join(shown(latency[k]) for k in ("p50_ns", "p90_ns", "p99_ns"))


def total_of(hists: list[dict[str, list[int]]]) -> int:
    return sum(sum(h["c"]) for h in hists)


def without_open_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as a loadmaster from before the open model wrote it: none of its fields."""
    old = copy.deepcopy(doc)
    for key in TOP_OPEN:
        del old[key]
    if old["totals"] is not None:
        for st in [old["totals"]["all"], *old["totals"]["names"].values()]:
            del st["open"]
    for key in SERIES_OPEN:
        del old["series"][key]
    for s in old["series"]["names"].values():
        for key in NAME_SERIES_OPEN:
            del s[key]
    return old


# -- the result file --------------------------------------------------------------------
def test_the_result_file_holds_what_the_final_block_says_of_the_schedule(
        runs: dict[str, Run]) -> None:
    run = runs["open"]
    assert run.result.code == 0, run.result.stderr
    doc, final = run.doc(), run.result.final()
    assert doc["schedule"] == {"arrival_rate": RATE, "time_unit_s": 1.0,
                               "arrivals": "uniform", "rate_per_s": RATE, "text": "100/s"}
    assert final["arrival rate (target)"] == "100/s (uniform)"
    assert doc["config"]["arrival_rate"] == RATE and "users" not in doc["config"]
    assert doc["users_planned"] == 2 and final["users"] == f"{doc['users']} (pool of at most 2)"
    total = doc["totals"]["all"]
    sched = total["open"]
    assert sched["scheduled"] == run.count("calls scheduled") == RATE * RUN_TIME
    assert sched["scheduled"] == total["ok"] + total["fail"] + sched["dropped"]
    assert sched["late"] == run.count("late calls") > total["ok"] // 2  # it fell behind
    assert sched["dropped"] == run.count("dropped calls") > 0
    assert trio(sched["service"]) == final["service time p50/p90/p99"]
    assert trio(sched["lag"]) == final["schedule lag p50/p90/p99"]
    assert shown(total["p99_ns"]) == final["99% response time"]
    # the three histograms hold the same successes; the target answers in 50 ms, so the
    # service time is over 50 ms and the corrected time longer by the wait for a client
    for key in ("service", "lag"):
        assert total_of([sched[key]["hist"]]) == total["ok"]
    assert sched["service"]["p50_ns"] >= DELAY_MS * 10**6
    assert sched["service"]["p99_ns"] < 250 * 10**6
    assert total["p50_ns"] > sched["service"]["p50_ns"]
    assert sched["lag"]["max_ns"] <= 0.51e9  # none started beyond max_schedule_lag
    assert doc["totals"]["names"][NAME]["open"] == sched  # one name: the same figures


def test_the_series_hold_the_late_and_dropped_calls_and_both_other_latencies(
        runs: dict[str, Run]) -> None:
    doc = runs["open"].doc()
    series, sched = doc["series"], doc["totals"]["all"]["open"]
    assert doc["missed_deltas"] == 0 and not doc["incomplete"]
    n = series["seconds"]
    assert n >= RUN_TIME
    one = series["names"][NAME]
    for key in SERIES_OPEN:
        assert len(series[key]) == len(one[key]) == n
    # every second's calls are in the figures of its second: they add up to the totals
    assert sum(series["late"]) == sum(one["late"]) == sched["late"]
    assert sum(series["dropped"]) == sum(one["dropped"]) == sched["dropped"]
    assert sum(1 for k in range(1, RUN_TIME) if one["late"][k] > 0) >= RUN_TIME - 2
    for key in ("service_hist", "lag_hist"):
        assert [sum(h["c"]) for h in one[key]] == one["ok"], key
    merged: dict[int, int] = {}
    for h in one["service_hist"]:
        for i, c in decode_histogram(h).items():
            merged[i] = merged.get(i, 0) + c
    assert merged == decode_histogram(sched["service"]["hist"])


def test_a_closed_model_file_has_null_open_fields(runs: dict[str, Run]) -> None:
    run = runs["closed"]
    assert run.result.code == 0, run.result.stderr
    doc = run.doc()
    assert doc["schedule"] is None
    assert doc["totals"]["all"]["open"] is None
    assert all(st["open"] is None for st in doc["totals"]["names"].values())
    assert doc["series"]["late"] is None and doc["series"]["dropped"] is None
    for s in doc["series"]["names"].values():
        assert all(s[key] is None for key in NAME_SERIES_OPEN)
    assert "late calls" not in run.result.final()


# -- loadmaster report --------------------------------------------------------------------
def test_report_prints_the_runs_final_block_and_writes_the_same_reports(
        runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["open"]
    r = cli("report", str(run.file("result.json")), "--html", "again.html", "--json",
            "again.json", "--csv", "again", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    block = final_block(r.stdout)
    assert "calls scheduled" in block and "schedule lag p50/p90/p99" in block
    assert block == final_block(run.result.stdout)
    assert (tmp_path / "again.html").read_bytes() == run.file("report.html").read_bytes()
    assert (tmp_path / "again.json").read_bytes() == run.file("summary.json").read_bytes()
    for suffix in ("_stats.csv", "_failures.csv", "_stats_history.csv"):
        assert (tmp_path / f"again{suffix}").read_bytes() == \
            run.file(f"run{suffix}").read_bytes()


def test_report_of_several_names_lists_each_names_schedule_figures(
        runs: dict[str, Run], tmp_path: Path) -> None:
    doc = runs["open"].doc()
    names = doc["totals"]["names"]
    other = copy.deepcopy(names[NAME])
    other["open"].update(late=3, dropped=7, scheduled=other["open"]["scheduled"] + 7 -
                         other["open"]["dropped"])
    names["Slow"] = other
    (tmp_path / "two.json").write_text(json.dumps(doc))
    r = cli("report", "two.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = final_block(r.stdout).splitlines()
    head = next(k for k, line in enumerate(lines) if line.startswith("open model ("))
    rows = {line.split()[0]: line.split() for line in lines[head + 2:head + 4]}
    sched = names[NAME]["open"]
    assert rows["Slow"][1:3] == ["3", "7"]
    assert rows[NAME][1:3] == [str(sched["late"]), str(sched["dropped"])]
    # the p99 columns: corrected, service, lag, in ms as the block prints them
    assert " ".join(rows[NAME][3:]) == " ".join(
        shown(v) for v in (names[NAME]["p99_ns"], sched["service"]["p99_ns"],
                           sched["lag"]["p99_ns"]))


# -- files from before the open model, and bad ones ---------------------------------------
@pytest.mark.parametrize("model", ["closed", "open"])
def test_a_file_without_the_open_models_fields_still_loads_and_renders(
        runs: dict[str, Run], model: str, tmp_path: Path) -> None:
    doc = runs[model].doc()
    old = without_open_fields(doc)
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert check_result(tmp_path / "old.json", old) == old
    view = final_view(old)
    assert view is not None
    text = format_final(view)
    assert "calls scheduled" not in text and "success count" in text
    html, summary = render_html(old), summarize(old)
    assert summary["schedule"] is None and summary["total"]["open"] is None
    assert 'id="table-open"' not in html and 'id="table-names"' in html
    if model == "closed":  # nothing of the closed model was lost
        fresh = final_view(doc)
        assert fresh is not None and format_final(fresh) == text
        assert html == render_html(doc)
        assert summary == summarize(doc)
    r = cli("report", "old.json", "--html", "old.html", "--json", "old.json.sum", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert final_block(r.stdout) == final_block(text)


def _broken(doc: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """Name -> (an open-model document with one figure wrong, where the error is)."""
    out = {}
    bad = copy.deepcopy(doc)
    bad["totals"]["all"]["open"]["service"]["hist"]["c"].append(3)
    out["service"] = (bad, "totals/all/open/service/hist")
    bad = copy.deepcopy(doc)
    bad["totals"]["names"][NAME]["open"]["scheduled"] += 1
    out["scheduled"] = (bad, f"totals/names/{NAME}/open/scheduled")
    bad = copy.deepcopy(doc)
    bad["series"]["names"][NAME]["late"].append(0)
    out["late"] = (bad, f"series/names/{NAME}/late")
    bad = copy.deepcopy(doc)
    bad["series"]["names"][NAME]["lag_hist"][0]["c"].append(1)
    out["lag"] = (bad, f"series/names/{NAME}/lag_hist/0")
    bad = copy.deepcopy(doc)
    bad["schedule"]["arrivals"] = "bursty"
    out["arrivals"] = (bad, "schedule")
    bad = copy.deepcopy(doc)
    del bad["totals"]["all"]["open"]["lag"]
    out["no-lag"] = (bad, "totals/all/open")
    bad = copy.deepcopy(doc)
    del bad["config"]["max_users"]  # the open model's keys are all there
    out["no-max-users"] = (bad, "config")
    return out


def test_wrong_open_model_figures_are_named(runs: dict[str, Run], tmp_path: Path) -> None:
    for name, (doc, where) in _broken(runs["open"].doc()).items():
        with pytest.raises(ReportInputError, match=f"at {where}"):
            check_result(tmp_path / f"{name}.json", doc)


# -- the summary and compare --------------------------------------------------------------
def test_the_summary_has_each_names_late_dropped_service_and_lag(runs: dict[str, Run]) -> None:
    run = runs["open"]
    summary = json.loads(run.file("summary.json").read_text())
    jsonschema.validate(summary, SUMMARY_SCHEMA, cls=jsonschema.Draft202012Validator)
    doc = run.doc()
    assert summary["schedule"] == doc["schedule"]
    for figures, st in [(summary["total"], doc["totals"]["all"]),
                        (summary["names"][NAME], doc["totals"]["names"][NAME])]:
        sched = st["open"]
        assert figures["open"] == {
            "scheduled": sched["scheduled"], "late": sched["late"],
            "dropped": sched["dropped"],
            **{f"{kind}_{p}_ms": sched[kind][f"{p}_ns"] / 1e6
               for kind in ("service", "lag") for p in ("p50", "p90", "p99")}}
    assert summary["total"]["open"]["late"] == run.count("late calls")
    closed = summarize(runs["closed"].doc())
    jsonschema.validate(closed, SUMMARY_SCHEMA, cls=jsonschema.Draft202012Validator)
    assert closed["schedule"] is None and closed["total"]["open"] is None


def test_compare_reads_open_model_summaries_and_results(runs: dict[str, Run]) -> None:
    run = runs["open"]
    same = cli("compare", "result.json", "summary.json", cwd=run.folder)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no regression" in same.stdout
    # the open run against the closed one (another name): compared on every name merged
    other = cli("compare", str(runs["closed"].file("result.json")), "summary.json",
                "--tolerance", "1000%", "--fail-tolerance", "100", cwd=run.folder)
    assert other.returncode == 0, other.stdout + other.stderr
    assert f"only in B (summary.json): {NAME}" in other.stdout

