"""The HTML report of a result file: one self-contained page (``render_html``).

The input is the result document (loadmaster/schemas/result-schema.json, built by
``loadmaster/result.py``). The tables are rendered here, every text from the document
escaped, so they read without JavaScript; the charts' data (per-second percentiles
computed here from the series' histograms) is embedded as JSON and drawn by
``report_page/report.js`` with the vendored uPlot. Every script and style is inlined and
a Content-Security-Policy forbids any load: the page works offline, as one file. The
same document always gives the same bytes (no clock is read).

In the open model (the document's ``schedule``) the page adds what the final block adds
(the schedule, scheduled, late and dropped calls, service time and schedule lag), a
table of those per name, late and dropped calls in the calls-per-second chart, and a
chart of the corrected p99 against the service time's and the schedule lag's.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

from loadmaster.resultfile import (
    bucket_values,
    flatten_series,
    merge_flat,
    schedule_of,
    second_quantiles,
)
from loadmaster.thresholds import verdicts_of
from protocol.exitcodes import ExitCode
from protocol.stats import LATE_AFTER_NS
from protocol.wire.limits import format_size

__all__ = ["render_html"]

UPLOT_VERSION = "1.6.32"
DASH = "-"
# (label, field, element id) of the headline's response times, in the console's order
HEADLINE_TIMES = (
    ("average response time", "mean_ns", "total-avg"),
    ("min response time", "min_ns", "total-min"),
    ("max response time", "max_ns", "total-max"),
    ("Median response time", "p50_ns", "total-p50"),
    ("90% response time", "p90_ns", "total-p90"),
    ("95% response time", "p95_ns", "total-p95"),
    ("99% response time", "p99_ns", "total-p99"),
    ("99.9% response time", "p99_9_ns", "total-p99-9"),
)
CHART_QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
GOOD, BAD, BLUE, WARN, PURPLE = "#2e8b3e", "#d0312d", "#2f6fb3", "#e08a00", "#7b4bb7"
# one colour per name or agent, in order (cycled past ten)
PALETTE = ("#2f6fb3", "#e08a00", "#2e8b3e", "#d0312d", "#7b4bb7", "#8c564b", "#d6589f",
           "#5f6b7a", "#a0a316", "#17a2b8")

Cell = tuple[str, str]  # (text, class), the text not yet escaped
# the open model's table: per name, what the schedule asked and got
OPEN_HEAD: list[Cell] = [
    ("name", ""), ("scheduled", "num"), ("late", "num"), ("dropped", "num"),
    ("p50 ms", "num"), ("p90 ms", "num"), ("p99 ms", "num"),
    ("service p50 ms", "num"), ("service p90 ms", "num"), ("service p99 ms", "num"),
    ("lag p50 ms", "num"), ("lag p90 ms", "num"), ("lag p99 ms", "num")]
FloatArray = npt.NDArray[np.float64]


# -- assets -----------------------------------------------------------------------------
@cache
def _asset(*parts: str) -> str:
    return resources.files("loadmaster").joinpath(*parts).read_text(encoding="utf-8")


def _uplot_js() -> str:
    # the vendored file starts with its own licence comment; the credit line says which
    js = _asset("dash", "vendor", "uplot", "uPlot.iife.min.js")
    return (f"/* uPlot {UPLOT_VERSION} (c) 2022 Leon Sorokin, MIT license; vendored unchanged "
            f"from loadmaster/dash/vendor/uplot */\n{js}")


def _inline(text: str, tag: str) -> str:
    """``text`` as the content of a <script> or <style>: it must not end the element."""
    if f"</{tag}" in text.lower():
        raise ValueError(f"an inlined {tag} holds '</{tag}'")
    return text


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# -- formatting -------------------------------------------------------------------------
def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _int(value: int | None) -> str:
    return DASH if value is None else str(value)


def _ms_value(ns: float | None) -> str:
    """Milliseconds as the console shows them: 3 decimals below 10 ms, then 1."""
    if ns is None:
        return DASH
    ms = ns / 1e6
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _ms(ns: float | None) -> str:
    return DASH if ns is None else f"{_ms_value(ns)} ms"


def _trio(latency: Mapping[str, Any]) -> str:
    """p50 / p90 / p99 as the final block shows them."""
    return " / ".join(_ms(latency[key]) for key in ("p50_ns", "p90_ns", "p99_ns"))


def _scaled(value: float | None, factor: float, digits: int) -> str:
    return DASH if value is None else f"{factor * value:.{digits}f}"


def _utc(t: float | None) -> str:
    if t is None:
        return DASH
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _exit_text(code: int) -> str:
    try:
        meaning = ExitCode(code).name.lower().replace("_", " ")
    except ValueError:
        return str(code)
    return f"{code} ({meaning})"


def _table(table_id: str, head: Sequence[Cell], rows: Iterable[Sequence[Cell]],
           cls: str = "") -> str:
    """A table; a cell's class "num" aligns it right."""
    th = "".join(f'<th class="{c}">{_e(t)}</th>' if c else f"<th>{_e(t)}</th>"
                 for t, c in head)
    body = []
    for row in rows:
        tds = "".join(f'<td class="{c}">{_e(t)}</td>' if c else f"<td>{_e(t)}</td>"
                      for t, c in row)
        body.append(f"<tr>{tds}</tr>")
    klass = f' class="{cls}"' if cls else ""
    return (f'<table id="{table_id}"{klass}><thead><tr>{th}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _section(title: str, content: str, section_id: str) -> str:
    return f'<section id="{section_id}"><h2>{_e(title)}</h2>{content}</section>'


def _empty(text: str, element_id: str = "") -> str:
    ident = f' id="{element_id}"' if element_id else ""
    return f'<p class="empty"{ident}>{_e(text)}</p>'


# -- per-second figures -----------------------------------------------------------------
def _ms_list(ns: FloatArray) -> list[float | None]:
    """Milliseconds rounded to 3 decimals (compact JSON); None where NaN."""
    return [None if math.isnan(v) else v for v in np.round(ns / 1e6, 3).tolist()]


def _chart(chart_id: str, title: str, y_label: str, series: list[dict[str, Any]], *,
           x: Sequence[float] | None = None, x_label: str = "seconds since T0",
           kind: str = "line", **extra: Any) -> dict[str, Any]:
    """A chart for report.js; x None: the run's seconds 1..N."""
    return {"id": chart_id, "title": title, "kind": kind, "x": x, "xLabel": x_label,
            "yLabel": y_label, "series": series, **extra}


def _line(label: str, color: str, values: Sequence[Any], decimals: int = 0,
          **extra: Any) -> dict[str, Any]:
    return {"label": label, "color": color, "values": values, "decimals": decimals, **extra}


def _chart_data(doc: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The charts' data, in the page's order, and why any chart is left out."""
    series = doc["series"]
    n = int(series["seconds"])
    charts: list[dict[str, Any]] = []
    left_out: list[str] = []
    if n == 0:
        left_out.append("no per-second figures: the load never started")
    else:
        rates = [_line("ok/s", GOOD, series["ok"]), _line("fail/s", BAD, series["fail"])]
        if series.get("late") is not None and series.get("dropped") is not None:
            rates += [_line("late/s", WARN, series["late"]),
                      _line("dropped/s", PURPLE, series["dropped"])]
        charts.append(_chart("chart-rps", "calls per second", "calls/s", rates))
        charts.append(_chart("chart-clients", "clients", "clients", [
            _line("clients", BLUE, series["clients"])]))
    names = series["names"]
    flat = {name: flatten_series(s["hist"]) for name, s in names.items()}
    merged = merge_flat(b for name, b in flat.items() if not names[name].get("step"))
    ms: list[list[float | None]] = []
    if merged[0].size:
        ms = [_ms_list(a) for a in second_quantiles(merged, n, [q for _, q in CHART_QUANTILES])]
        charts.append(_chart("chart-latency", "response time, every name", "ms", [
            _line(label, color, values, 3) for (label, _), color, values
            in zip(CHART_QUANTILES, (GOOD, WARN, BAD), ms, strict=True)]))
        open_chart = _open_chart(names, n, ms[2])
        if open_chart is not None:
            charts.append(open_chart)
        with_calls = [name for name, b in flat.items() if b[0].size]
        if len(names) > 1:
            lines = []
            for k, name in enumerate(with_calls):
                p50, p99 = second_quantiles(flat[name], n, (0.5, 0.99))
                color = PALETTE[k % len(PALETTE)]
                lines.append(_line(f"{name} p50", color, _ms_list(p50), 3))
                lines.append(_line(f"{name} p99", color, _ms_list(p99), 3, dash=True))
            charts.append(_chart("chart-latency-names",
                                 "response time per name (p50 solid, p99 dashed)", "ms", lines))
    elif n > 0:
        left_out.append("no successful call in the series: no response time over time")
    distribution = _distribution(doc)
    if distribution is not None:
        charts.append(distribution)
    elif doc["totals"] is not None:
        left_out.append("no successful call: no response-time distribution")
    if ms:
        # one point per second with a success: calls that second against its latency
        points = sorted((ok, k) for k, ok in enumerate(series["ok"])
                        if ok > 0 and ms[0][k] is not None)
        charts.append(_chart(
            "chart-latency-vs-rps", "response time against calls per second", "ms",
            [_line("p50", GOOD, [ms[0][k] for _, k in points], 3),
             _line("p99", BAD, [ms[2][k] for _, k in points], 3)],
            x=[ok for ok, _ in points], x_label="ok calls in the second", kind="points"))
    agents = series["agents"]
    if n > 0 and agents:
        colors = {a: PALETTE[k % len(PALETTE)] for k, a in enumerate(agents)}
        charts.append(_chart("chart-agents", "calls per second per agent", "ok/s", [
            _line(a, colors[a], s["ok"]) for a, s in agents.items()]))
        cpu = {a: [None if span <= 0 else round(100 * used / span, 1)
                   for used, span in zip(s["cpu_seconds"], s["cpu_span"], strict=True)]
               for a, s in agents.items()}
        if any(v is not None for values in cpu.values() for v in values):
            charts.append(_chart(
                "chart-agents-cpu", "load generator CPU per agent (% of one core per worker)",
                "cpu %", [_line(a, colors[a], cpu[a], 1) for a in agents]))
    return {"seconds": n, "charts": charts}, left_out


def _open_chart(names: Mapping[str, Any], n: int,
                p99: list[float | None]) -> dict[str, Any] | None:
    """The open model's p99 per second, every name: the corrected response time (``p99``,
    already computed), the service time and the schedule lag; None in the closed model."""
    lines = [_line("response time p99", BAD, p99, 3)]
    for key, label, color in (("service_hist", "service time p99", BLUE),
                              ("lag_hist", "schedule lag p99", WARN)):
        hists = [s[key] for s in names.values() if s.get(key) is not None
                 and not s.get("step")]
        if not hists:
            return None
        (values,) = second_quantiles(merge_flat(map(flatten_series, hists)), n, (0.99,))
        lines.append(_line(label, color, _ms_list(values), 3))
    return _chart("chart-open", "p99: response time, service time, schedule lag", "ms",
                  lines)


def _distribution(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """Calls per latency bucket (every bucket between the first and last: zeros too)."""
    totals = doc["totals"]
    if totals is None or not totals["all"]["hist"]["i"]:
        return None
    indexes = np.cumsum(np.array(totals["all"]["hist"]["i"], dtype=np.int64))
    counts = np.array(totals["all"]["hist"]["c"], dtype=np.int64)
    low = max(1, int(indexes[0]))  # bucket 0 (0 ns) has no place on a log axis
    high = int(indexes[-1])
    if high < low:
        return None
    dense = np.zeros(high - low + 1, dtype=np.int64)
    keep = indexes >= low
    np.add.at(dense, indexes[keep] - low, counts[keep])
    ms = bucket_values()[low:high + 1] / 1e6
    below = np.cumsum(dense)
    share = np.round(100 * below / max(1, int(counts.sum())), 3)
    return _chart(
        "chart-distribution", "response-time distribution (every success of the run)",
        "calls", [_line("calls", BLUE, dense.tolist(), fill=True),
                  _line("% at or below", WARN, share.tolist(), 3, scale="pct")],
        x=[float(f"{v:.6g}") for v in ms.tolist()], x_label="response time, ms (log)",
        kind="distribution", y2Label="% of calls at or below")


def _json_script(data: object) -> str:
    """JSON for a <script type="application/json">: no character of it can end the element
    or open markup."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


# -- the page's sections ----------------------------------------------------------------
def _header(doc: Mapping[str, Any]) -> str:
    run_id = doc["run_id"]
    incomplete = ('<span id="incomplete" class="mark bad">INCOMPLETE</span>'
                  if doc["incomplete"] else "")
    exit_class = "good" if doc["exit_code"] == 0 else "bad"
    tool = doc["tool"]
    rows = [
        ("run id", _e(run_id if run_id is not None else "- (the run never started)"),
         "run-id"),
        ("config file", _e(doc["config_file"]), "config-file"),
        ("start (T0)", _e(_utc(doc["t0"]) if doc["t0"] is not None
                          else "- (the load never started)"), "start"),
        ("end", _e(_utc(doc["end"])), "end"),
        ("run time", _e(DASH if doc["run_time"] is None else f"{doc['run_time']:.3f} s"),
         "run-time"),
        ("exit code", f'<b class="{exit_class}">{_e(_exit_text(doc["exit_code"]))}</b>',
         "exit-code"),
    ]
    if doc["signal"] is not None:
        rows.append(("stopped by", _e(doc["signal"]), "signal"))
    rows.append(("live deltas lost", _e(doc["missed_deltas"]), "missed"))
    rows.append(("tool", _e(f"{tool['name']} {tool['version']}"), "tool"))
    cells = "".join(f'<tr><td class="key">{_e(label)}</td><td id="{ident}">{value}</td></tr>'
                    for label, value, ident in rows)
    error = ""
    if doc["error"] is not None:
        error = f'<h3>error</h3><pre id="run-error" class="error">{_e(doc["error"])}</pre>'
    title = _e(f"run {run_id}" if run_id is not None else "a run that never started")
    return (f'<header><div class="row"><h1>Load test report</h1><span class="run">{title}'
            f'</span>{incomplete}</div>'
            f'<table id="table-run" class="kv"><tbody>{cells}</tbody></table>{error}</header>')


def _totals(doc: Mapping[str, Any]) -> str:
    totals = doc["totals"]
    if totals is None:
        return _section("Final figures", _empty(
            "No figures: the run ended before its final block (see the exit code and the "
            "error above).", "no-figures"), "final")
    total = totals["all"]
    run_time = doc["run_time"]
    schedule = doc.get("schedule")
    users = _int(doc["users"])
    if schedule is not None:
        users += f" (pool of at most {doc['users_planned']})"
    elif doc["users"] is not None and doc["users"] != doc["users_planned"]:
        users += f" (planned {doc['users_planned']})"
    done = total["ok"] + total["fail"]
    rows: list[tuple[str, str, str]] = [
        ("run time", f"{run_time:.3f} s", "total-run-time"),
        ("users", users, "total-users"),
        ("success count", str(total["ok"]), "total-ok"),
        ("fail count", str(total["fail"]), "total-fail"),
        ("rps", f"{total['rps']:.2f}", "total-rps"),
        ("accuracy", f"{100 * total['ok'] / done:.2f}%" if done else DASH, "total-accuracy"),
    ]
    rows += [(label, _ms(total[key]), ident) for label, key, ident in HEADLINE_TIMES]
    sched = total.get("open")
    if schedule is not None and sched is not None:
        rows += [
            ("arrival rate (target)", _rate_text(doc), "total-arrival-rate"),
            ("calls scheduled", str(sched["scheduled"]), "total-scheduled"),
            ("calls started/s", f"{done / run_time:.2f}" if run_time else DASH,
             "total-started"),
            ("late calls", f"{sched['late']} (started over {LATE_AFTER_NS // 10**6} ms after "
                           f"their intended start)", "total-late"),
            ("dropped calls", f"{sched['dropped']} (never started)", "total-dropped"),
            ("service time p50/p90/p99", _trio(sched["service"]), "total-service"),
            ("schedule lag p50/p90/p99", _trio(sched["lag"]), "total-lag"),
        ]
    body = "".join(f'<tr><td class="key">{_e(label)}</td>'
                   f'<td id="{ident}" class="num">{_e(value)}</td></tr>'
                   for label, value, ident in rows)
    title = "Final figures" + (" (INCOMPLETE)" if doc["incomplete"] else "")
    return _section(title, f'<table id="table-totals" class="kv totals"><tbody>{body}'
                           f"</tbody></table>{_grace(doc)}", "final")


def _names(doc: Mapping[str, Any]) -> str:
    totals = doc["totals"]
    if totals is None:
        return ""
    head = [("name", ""), ("success", "num"), ("fail", "num"), ("rps", "num"),
            ("avg ms", "num"), ("p50 ms", "num"), ("p90 ms", "num"), ("p95 ms", "num"),
            ("p99 ms", "num"), ("max ms", "num")]
    rows = [[(name, ""), (str(st["ok"]), "num"), (str(st["fail"]), "num"),
             (f"{st['rps']:.2f}", "num"), (_ms_value(st["mean_ns"]), "num"),
             (_ms_value(st["p50_ns"]), "num"), (_ms_value(st["p90_ns"]), "num"),
             (_ms_value(st["p95_ns"]), "num"), (_ms_value(st["p99_ns"]), "num"),
             (_ms_value(st["max_ns"]), "num")]
            for name, st in totals["names"].items()]
    content = (_table("table-names", head, rows) if rows
               else _empty("no operation was counted", "no-names"))
    return _section("Operations", content, "operations")


def _rate_text(doc: Mapping[str, Any]) -> str:
    """The schedule as the final block shows it: "500/s (uniform)"."""
    schedule = schedule_of(doc)
    return DASH if schedule is None else f"{schedule.text} ({schedule.arrivals})"


def _open_row(name: str, st: Mapping[str, Any]) -> list[Cell]:
    sched = st["open"]
    row: list[Cell] = [(name, ""), (str(sched["scheduled"]), "num"),
                       (str(sched["late"]), "num bad" if sched["late"] else "num"),
                       (str(sched["dropped"]), "num bad" if sched["dropped"] else "num")]
    for latency in (st, sched["service"], sched["lag"]):
        row += [(_ms_value(latency[key]), "num") for key in ("p50_ns", "p90_ns", "p99_ns")]
    return row


def _open_model(doc: Mapping[str, Any]) -> str:
    """The open model's figures per name: what the schedule asked and got."""
    schedule, totals = doc.get("schedule"), doc["totals"]
    if schedule is None or totals is None:
        return ""
    text = (f"calls started on a schedule of {_rate_text(doc)}, whatever the target "
            f"did (at most {doc['users_planned']} clients). p50/p90/p99: from each call's "
            f"intended start (the corrected response time); service: from its actual "
            f"start; lag: the wait between the two. Late: started over "
            f"{LATE_AFTER_NS // 10**6} ms after its intended start; dropped: never started "
            f"(not within max_schedule_lag, or not by the stop).")
    ops = [(name, st) for name, st in totals["names"].items() if st.get("open") is not None]
    if len(ops) > 1 and totals["all"].get("open") is not None:
        ops.append(("(every name)", totals["all"]))
    content = (_table("table-open", OPEN_HEAD, [_open_row(name, st) for name, st in ops])
               if ops else _empty("no call was scheduled", "no-open"))
    return _section("Open model: the schedule per name",
                    f'<p id="schedule">{_e(text)}</p>{content}', "open-model")


def _statuses(doc: Mapping[str, Any]) -> str:
    """HTTP status codes and bytes per name (the built-in HTTP client's figures)."""
    totals = doc["totals"]
    if totals is None:
        return ""
    ops = [(name, st) for name, st in totals["names"].items()
           if st["statuses"] or st["bytes_sent"] or st["bytes_received"]]
    if not ops:
        return _section("HTTP", _empty("no HTTP figures (the built-in HTTP client, "
                                       "protocol.http, records them)", "no-statuses"), "http")
    if len(ops) > 1:
        ops.append(("(every name)", totals["all"]))
    codes = sorted({code for _, st in ops for code in st["statuses"]}, key=int)
    with_bytes = any(st["bytes_sent"] or st["bytes_received"] for _, st in ops)
    head = [("name", ""), *((code, "num") for code in codes)]
    if with_bytes:
        head += [("sent", "num"), ("received", "num")]
    rows = []
    for name, st in ops:
        row = [(name, ""), *((str(st["statuses"].get(code, 0)), "num") for code in codes)]
        if with_bytes:
            row += [(format_size(st["bytes_sent"], ".1f"), "num"),
                    (format_size(st["bytes_received"], ".1f"), "num")]
        rows.append(row)
    return _section("HTTP responses by status code", _table("table-statuses", head, rows),
                    "http")


def _grace(doc: Mapping[str, Any]) -> str:
    g = doc["stop_grace"]
    if g is None:
        return ""
    cancelled = (" (failures; a cancelled call does not extend the run time)"
                 if g["cancelled"] else "")
    text = (f"stop grace: {g['seconds']:.3f} s; calls in flight at the stop: "
            f"{g['finished']} finished, {g['cancelled']} cancelled{cancelled}")
    return f'<p id="stop-grace">{_e(text)}</p>'


def _errors(doc: Mapping[str, Any]) -> str:
    errors = doc["errors"]
    if not errors:
        text = "no errors" if doc["totals"] is not None else "no figures"
        return _section("Errors", _empty(text, "no-errors"), "errors")
    head = [("count", "num"), ("name", ""), ("type", ""), ("message", "msg")]
    rows = [[(str(e["count"]), "num"), (e["name"], ""), (e["type"], ""), (e["message"], "msg")]
            for e in errors]
    total = sum(e["count"] for e in errors)
    return _section(f"Errors ({len(errors)} distinct, {total} calls)",
                    _table("table-errors", head, rows), "errors")


def _agents(doc: Mapping[str, Any]) -> str:
    agents = doc["agents"]
    if not agents:
        return _section("Agents", _empty("no agent registered", "no-agents"), "agents")
    head = [("name", ""), ("hostname", ""), ("workers", "num"), ("clients", "num"),
            ("success", "num"), ("fail", "num"), ("rps", "num"), ("cpu %", "num"),
            ("max loop lag ms", "num"), ("generator", ""), ("clock offset ms", "num"),
            ("skew ms", "num"), ("state", ""), ("lost reason", "")]
    rows = []
    lost: list[str] = []
    for a in agents:
        generator = DASH if a["ok"] is None else ("SATURATED" if a["saturated"] else "ok")
        rows.append([
            (a["name"], ""), (a["hostname"], ""), (str(a["workers"]), "num"),
            (str(a["clients"]), "num"), (_int(a["ok"]), "num"), (_int(a["fail"]), "num"),
            (_num(a["rps"], 1), "num"), (_scaled(a["cpu"], 100, 1), "num"),
            (_scaled(a["max_loop_lag_s"], 1000, 1), "num"),
            (generator, "bad" if a["saturated"] else ""),
            (_scaled(a["clock_offset_s"], 1000, 1), "num"),
            (_scaled(a["start_skew_s"], 1000, 1), "num"),
            (a["state"], "" if a["state"] in ("ok", "registered") else "bad"),
            (a["lost_reason"] or "", "msg")])
        lost += [f"agent {a['name']}: worker {w['worker']} exited without its final totals: "
                 f"{w['reason']}" for w in a["lost_workers"]]
    items = "".join(f"<li>{_e(t)}</li>" for t in lost)
    return _section("Agents", _table("table-agents", head, rows)
                    + (f'<ul id="lost-workers">{items}</ul>' if lost else ""), "agents")


def _thresholds(doc: Mapping[str, Any]) -> str:
    """The verdict of each rule of ``thresholds:``; nothing without rules."""
    verdicts = verdicts_of(doc.get("thresholds", []))
    if not verdicts:
        return ""
    failed = sum(not v.passed for v in verdicts)
    summary = (f"{len(verdicts) - failed} passed, {failed} failed"
               + (" (exit 6)" if failed else ""))
    head = [("verdict", ""), ("rule", ""), ("name", ""), ("measured", "num")]
    rows = [[("pass", "good") if v.passed else ("FAIL", "bad"), (v.rule.shown(), ""),
             (v.rule.name or "all", ""), (v.measured(), "num")] for v in verdicts]
    klass = "bad" if failed else "good"
    return _section("Thresholds", f'<p id="thresholds-summary" class="{klass}">{_e(summary)}'
                    f"</p>" + _table("table-thresholds", head, rows), "thresholds")


def _notes(doc: Mapping[str, Any]) -> str:
    parts = []
    if doc["missed_deltas"]:
        exact = "" if doc["incomplete"] else "the totals come from final totals and are exact; "
        text = (f"live deltas lost on the stats channel: {doc['missed_deltas']} ({exact}the "
                f"charts miss what they held)")
        parts.append(f'<p id="missed-deltas" class="warn">{_e(text)}</p>')
    if doc["notes"]:
        items = "".join(f"<li>{_e(n)}</li>" for n in doc["notes"])
        parts.append(f'<ul id="notes">{items}</ul>')
    if not parts:
        return ""
    return _section("Notes", "".join(parts), "notes-section")


def _charts(data: Mapping[str, Any], left_out: Sequence[str]) -> str:
    boxes = "".join(f'<div class="chart-box"><h3>{_e(c["title"])}</h3>'
                    f'<div id="{c["id"]}" class="chart"></div></div>' for c in data["charts"])
    notes = "".join(_empty(text) for text in left_out)
    grid = f'<div class="charts">{boxes}</div>' if boxes else ""
    script = ('<noscript><p class="empty">The charts need JavaScript; the tables do not.</p>'
              "</noscript>" if boxes else "")
    return _section("Charts", f'{script}<div id="charts-notes">{notes}</div>{grid}', "charts")


def _config(doc: Mapping[str, Any]) -> str:
    def pretty(value: Any) -> str:
        return json.dumps(value, indent=2, ensure_ascii=False)

    return _section(
        "Configuration (masked)",
        f'<h3>system keys</h3><pre id="config">{_e(pretty(doc["config"]))}</pre>'
        f'<h3>custom keys</h3><pre id="custom">{_e(pretty(doc["custom"]))}</pre>',
        "configuration")


# -- the page ---------------------------------------------------------------------------
def render_html(doc: Mapping[str, Any]) -> str:
    """The report page of a result document: one self-contained HTML file's text."""
    data, left_out = _chart_data(doc)
    body = "".join([
        _header(doc), "<main>", _totals(doc), _thresholds(doc), _charts(data, left_out),
        _names(doc),
        _open_model(doc), _statuses(doc), _errors(doc), _agents(doc), _notes(doc),
        _config(doc), "</main>",
        f'<footer>Rendered from the result file by {_e(doc["tool"]["name"])} '
        f'{_e(doc["tool"]["version"])}. Charts drawn with uPlot {UPLOT_VERSION} '
        "(MIT license), inlined.</footer>"])
    scripts = {
        "errors_js": _inline(_asset("report_page", "errors.js"), "script"),
        "uplot_js": _inline(_uplot_js(), "script"),
        "report_js": _inline(_asset("report_page", "report.js"), "script"),
    }
    # only these three scripts may run, and nothing may be loaded from anywhere
    csp = ("default-src 'none'; script-src " + " ".join(_sha256(s) for s in scripts.values())
           + "; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'")
    run_id = doc["run_id"]
    parts = {
        **scripts,
        "title": _e(f"load test report: run {run_id}" if run_id else "load test report"),
        "csp": _e(csp),
        "uplot_css": _inline(_asset("dash", "vendor", "uplot", "uPlot.min.css"), "style"),
        "theme_css": _inline(_asset("dash", "theme.css"), "style"),
        "report_css": _inline(_asset("report_page", "report.css"), "style"),
        "body": body,
        "data": _json_script(data),
    }
    # one pass: a part's text is never searched for placeholders
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m[1]], _asset("report_page", "report.html"))
