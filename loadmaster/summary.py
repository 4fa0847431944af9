"""The JSON summary (``--json FILE``): the final block's figures, small enough to keep
beside every CI build, and what ``loadmaster compare`` reads.

Built from the result document by a pure function: every figure is the result file's
(which are the final block's), converted to milliseconds. Its schema is
``schemas/summary-schema.json``. In the open model it has the schedule, and per name
(and all names) the late and dropped calls with the service time and schedule lag
(``open``; null in the closed model).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loadmaster.resultfile import check_document, check_result, read_json

__all__ = ["SUMMARY_KIND", "SUMMARY_VERSION", "figures", "load_summary", "summarize"]

SUMMARY_VERSION = 1
SUMMARY_KIND = "summary"
_PERCENTILES = (("p50", "p50_ns"), ("p90", "p90_ns"), ("p95", "p95_ns"), ("p99", "p99_ns"),
                ("p99_9", "p99_9_ns"))
_OPEN_PERCENTILES = (("p50", "p50_ns"), ("p90", "p90_ns"), ("p99", "p99_ns"))


def _ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


def figures(st: Mapping[str, Any]) -> dict[str, Any]:
    """One name's (or all names') figures, latencies in ms."""
    calls = st["ok"] + st["fail"]
    out: dict[str, Any] = {
        "ok": st["ok"], "fail": st["fail"], "rps": st["rps"],
        "fail_ratio": st["fail"] / calls if calls else 0.0,
        "avg_ms": _ms(st["mean_ns"]), "min_ms": _ms(st["min_ns"]), "max_ms": _ms(st["max_ns"]),
    }
    for label, key in _PERCENTILES:
        out[f"{label}_ms"] = _ms(st[key])
    out["statuses"] = dict(st["statuses"])
    out["bytes_sent"], out["bytes_received"] = st["bytes_sent"], st["bytes_received"]
    out["open"] = _open(st.get("open"))
    return out


def _open(sched: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The open model's figures of a name, latencies in ms; None in the closed model."""
    if sched is None:
        return None
    out: dict[str, Any] = {key: sched[key] for key in ("scheduled", "late", "dropped")}
    for kind in ("service", "lag"):
        for label, key in _OPEN_PERCENTILES:
            out[f"{kind}_{label}_ms"] = _ms(sched[kind][key])
    return out


def summarize(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of a result document (checked, or just built by the run)."""
    totals = doc["totals"]
    return {
        "kind": SUMMARY_KIND,
        "summary_version": SUMMARY_VERSION,
        "tool": dict(doc["tool"]),
        "result_version": doc["version"],
        "run_id": doc["run_id"],
        "config_file": doc["config_file"],
        "t0": doc["t0"],
        "end": doc["end"],
        "exit_code": doc["exit_code"],
        "incomplete": doc["incomplete"],
        "error": doc["error"],
        "run_time_s": doc["run_time"],
        "users": doc["users"],
        "users_planned": doc["users_planned"],
        "schedule": None if doc.get("schedule") is None else dict(doc["schedule"]),
        "total": None if totals is None else figures(totals["all"]),
        "names": {} if totals is None else {name: figures(st)
                                            for name, st in totals["names"].items()},
        "errors": [dict(e) for e in doc["errors"]],
        "agents": [{
            "name": a["name"], "hostname": a["hostname"], "workers": a["workers"],
            "clients": a["clients"], "state": a["state"], "ok": a["ok"], "fail": a["fail"],
            "rps": a["rps"], "cpu": a["cpu"],
            "max_loop_lag_ms": None if a["max_loop_lag_s"] is None else a["max_loop_lag_s"] * 1e3,
            "saturated": a["saturated"], "clock_offset_ms": a["clock_offset_s"] * 1e3,
            "start_skew_ms": None if a["start_skew_s"] is None else a["start_skew_s"] * 1e3,
        } for a in doc["agents"]],
        "stop_grace": None if doc["stop_grace"] is None else dict(doc["stop_grace"]),
        "missed_deltas": doc["missed_deltas"],
        "notes": list(doc["notes"]),
    }


def load_summary(path: Path) -> dict[str, Any]:
    """The summary of ``path``: a summary file (checked), or a result file summarized."""
    doc = read_json(path)
    if isinstance(doc, dict) and doc.get("kind") == SUMMARY_KIND:
        check_document(path, doc, "summary", "tool", "summary_version", SUMMARY_VERSION)
        return doc
    return summarize(check_result(path, doc))
