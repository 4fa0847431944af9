"""The result file (``loadmaster run --out PATH``): one JSON document per run.

Its schema is ``loadmaster/schemas/result-schema.json`` (``SCHEMA_VERSION``): every field is
described there. The document is built by pure functions from what the run collected:
the resolved config (masked, ``loadmaster/masking.py``), how the run ended, the agents'
records, the final block's view (``report.final_report``: its figures are reused, never
recomputed) and the per-second series (``loadmaster/series.py``). A run that failed
before its load has no final view and no series: the document then holds what exists.

Histograms are ``{"i": [...], "c": [...]}``: ``i`` holds the bucket indexes
delta-encoded (the first index, then the gap to each next one), ``c`` their counts;
``decode_histogram`` gives the index -> count mapping back (the layout of an index is
``protocol/histogram.py``, also described in the schema).

In the open model (``arrival_rate``) the document also holds the schedule (top-level
``schedule``), each name's late and dropped calls with its service time and schedule lag
(``open`` beside the name's figures, whose latencies are then the corrected ones), and
the same per second; in the closed model those fields are null.

``write_result`` writes atomically: a temporary file in the target's folder, then a
rename over the target, so a reader never sees half a file. A name ending ``.gz`` is
written gzip-compressed.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import math
import os
import secrets
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadmaster.config import Config, resolved_keys
from loadmaster.console import AgentLine, FinalView
from loadmaster.coordinator import AgentRecord
from loadmaster.masking import mask_text, masked
from loadmaster.report import agent_state
from loadmaster.series import AgentSecond, NameSecond, Second, Series
from protocol import __version__
from protocol.histogram import HISTOGRAM_LAYOUT, Counts, DenseHistogram, Histogram, Indexes
from protocol.plan import clients_of
from protocol.stats import OpStats, Schedule

__all__ = ["SCHEMA_VERSION", "TOOL", "Ending", "ResultFileError", "build_result",
           "check_writable", "decode_histogram", "encode_histogram", "write_result",
           "write_text"]

SCHEMA_VERSION = 1
TOOL = "loadtest"
PERCENTILES = (("p50_ns", 0.5), ("p90_ns", 0.9), ("p95_ns", 0.95), ("p99_ns", 0.99),
               ("p99_9_ns", 0.999))
# Seconds past the end of the run a delta may still cover (its last one, sent after the
# stop grace, names the next second); one beyond that is a peer's error and left out.
SERIES_SLACK = 10


class ResultFileError(Exception):
    """The result file cannot be written; the message names the path and why."""


@dataclass(frozen=True)
class Ending:
    """How the run ended, as the master saw it."""

    run_id: str | None  # None: the run never started (a check before it failed)
    t0: float | None  # wall clock of T0; None: the load never started
    end: float  # wall clock when the document is built
    exit_code: int
    signal: int | None = None  # the first SIGINT/SIGTERM
    error: str | None = None  # the error the master printed, if it printed one


# -- the document ---------------------------------------------------------------------
def encode_histogram(indexes: Indexes, counts: Counts) -> dict[str, list[int]]:
    """Packed arrays (indexes strictly increasing) as ``{"i": gaps, "c": counts}``."""
    gaps = np.diff(indexes.astype(np.int64), prepend=0)
    return {"i": gaps.tolist(), "c": counts.tolist()}


def decode_histogram(hist: Mapping[str, Sequence[int]]) -> dict[int, int]:
    """Bucket index -> count, from the file's encoding."""
    return dict(zip(itertools.accumulate(hist["i"]), hist["c"], strict=True))


def _encoded(hist: Histogram | DenseHistogram | None) -> dict[str, list[int]]:
    """A histogram in the file's encoding (None: empty)."""
    return encode_histogram(*(Histogram() if hist is None else hist).packed())


def _latency(hist: Histogram | DenseHistogram) -> dict[str, Any]:
    """A histogram's percentiles (unclamped: its calls' exact min and max are not kept),
    its highest bucket and the histogram itself."""
    out: dict[str, Any] = {label: hist.percentile(q) for label, q in PERCENTILES}
    out["max_ns"] = hist.percentile(1.0)
    out["hist"] = _encoded(hist)
    return out


def _open(st: OpStats, sched: Schedule) -> dict[str, Any]:
    return {"late": sched.late, "dropped": sched.dropped,
            "scheduled": st.ok + st.fail + sched.dropped,
            "service": _latency(sched.service), "lag": _latency(sched.lag)}


def _op(st: OpStats, run_time: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ok": st.ok, "fail": st.fail, "sum_ns": st.sum_ns, "min_ns": st.min_value,
        "max_ns": st.max_ns if st.ok else None, "mean_ns": st.mean_ns,
    }
    for label, q in PERCENTILES:
        out[label] = st.percentile(q)
    out["rps"] = st.ok / run_time if run_time > 0 else 0.0
    out["hist"] = _encoded(st.hist)
    out["statuses"] = {str(code): n for code, n in sorted(st.statuses.items())}
    out["bytes_sent"], out["bytes_received"] = st.sent, st.received
    out["open"] = None if st.sched is None else _open(st, st.sched)
    out["step"] = st.step
    return out


def _agent(agent: AgentRecord, line: AgentLine | None, total_workers: int,
           users: int) -> dict[str, Any]:
    planned = bool(agent.worker_ids)
    state = agent_state(agent) if planned else "registered"  # no final block
    if line is not None:
        state = line.state
    return {
        "name": agent.name,
        "hostname": agent.info.hostname,
        "workers": len(agent.worker_ids) if planned else agent.info.workers,
        "clients": sum(clients_of(w, total_workers, users) for w in agent.worker_ids),
        "state": state,
        "lost_reason": agent.lost_reason or None,
        "lost_workers": [{"worker": w, "reason": why}
                         for w, why in sorted(agent.lost_workers.items())],
        "ok": None if line is None else line.ok,
        "fail": None if line is None else line.fail,
        "rps": None if line is None else line.rps,
        "cpu": None if line is None else line.cpu,
        "max_loop_lag_s": None if line is None else line.loop_lag,
        "saturated": line is not None and line.saturated,
        "clock_offset_s": agent.clock_offset,
        "start_skew_s": None if line is None else line.start_skew,
    }


def _name_series(at: Sequence[NameSecond], open_model: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ok": [x.ok for x in at],
        "fail": [x.fail for x in at],
        "hist": [_encoded(x.hist) for x in at],
        "late": None, "dropped": None, "service_hist": None, "lag_hist": None,
        "step": any(x.step for x in at),
    }
    if open_model:  # a second without a success has no service time nor lag: empty
        out["late"], out["dropped"] = [x.late for x in at], [x.dropped for x in at]
        out["service_hist"] = [_encoded(x.service) for x in at]
        out["lag_hist"] = [_encoded(x.lag) for x in at]
    return out


def _series(series: Series | None, last: int, agent_order: Sequence[str],
            open_model: bool) -> dict[str, Any]:
    """Arrays aligned on seconds 1..N; a second without figures is zeros."""
    known = series.seconds if series is not None else {}
    n = max((k for k in known if 0 < k <= last), default=0)
    empty = Second()
    seconds = [known.get(k, empty) for k in range(1, n + 1)]
    names = sorted({name for s in seconds for name in s.names})
    seen = {a for s in seconds for a in s.agents}
    agents = [a for a in agent_order if a in seen] + sorted(seen - set(agent_order))
    blank_name, blank_agent = NameSecond(), AgentSecond()  # a second without its figures
    out_names = {name: _name_series([s.names.get(name, blank_name) for s in seconds],
                                    open_model)
                 for name in names}
    out_agents = {}
    for agent in agents:
        per = [s.agents.get(agent, blank_agent) for s in seconds]
        out_agents[agent] = {
            "ok": [x.ok for x in per],
            "fail": [x.fail for x in per],
            "cpu_seconds": [x.cpu_seconds for x in per],
            "cpu_span": [x.cpu_span for x in per],
            "loop_lag_s": [x.loop_lag for x in per],
        }
    return {
        "seconds": n,
        "clients": [s.clients for s in seconds],
        "ok": [s.ok for s in seconds],
        "fail": [s.fail for s in seconds],
        "late": [s.late for s in seconds] if open_model else None,
        "dropped": [s.dropped for s in seconds] if open_model else None,
        "names": out_names,
        "agents": out_agents,
    }


def plain(value: Any) -> Any:
    """A config value as strict JSON: non-finite floats and binary values as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return f"<binary, {len(value)} bytes>"
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _schedule(cfg: Config, view: FinalView | None) -> dict[str, Any] | None:
    """The open model's schedule as configured; None in the closed model."""
    if cfg.arrival_rate is None:
        return None
    shown = None if view is None or view.schedule is None else view.schedule.text
    return {"arrival_rate": cfg.arrival_rate, "time_unit_s": cfg.time_unit,
            "arrivals": cfg.arrivals, "rate_per_s": cfg.arrival_rate / cfg.time_unit,
            "text": shown}


def build_result(cfg: Config, mask: Iterable[str], ending: Ending, *,
                 view: FinalView | None = None, agents: Sequence[AgentRecord] = (),
                 series: Series | None = None) -> dict[str, Any]:
    """The result document (loadmaster/schemas/result-schema.json); ``view`` is the final
    block's, None when the run failed before it; ``mask``: the keys named with ``--mask``."""
    mask = tuple(mask)
    total_workers = sum(len(a.worker_ids) for a in agents)
    lines = {line.name: line for line in view.agents} if view is not None else {}
    incomplete = view is None or view.incomplete or any(
        w not in a.finals for a in agents for w in a.worker_ids)
    last = 0 if ending.t0 is None else math.ceil(ending.end - ending.t0) + SERIES_SLACK
    doc: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "tool": {"name": TOOL, "version": __version__},
        "run_id": ending.run_id,
        "histogram_layout": HISTOGRAM_LAYOUT,
        "t0": ending.t0,
        "end": ending.end,
        "run_time": None if view is None else view.run_time,
        "exit_code": ending.exit_code,
        "incomplete": incomplete,
        "signal": None if ending.signal is None else signal.Signals(ending.signal).name,
        "error": None if ending.error is None else mask_text(ending.error),
        "config_file": str(cfg.path),
        "config": plain(masked(resolved_keys(cfg), mask)),
        "custom": plain(masked(cfg.custom, mask)),
        "users": None if view is None else view.users,
        "users_planned": cfg.users,
        "schedule": _schedule(cfg, view),
        "agents": [_agent(a, lines.get(a.name), total_workers, cfg.users) for a in agents],
        "totals": None,
        "errors": [],
        "stop_grace": None,
        "missed_deltas": 0 if view is None else view.missed_deltas,
        "notes": [] if view is None else [mask_text(n) for n in view.notes],
        "thresholds": [] if view is None else [
            {"rule": v.rule.text, "name": v.rule.name, "over_s": v.rule.over,
             "passed": v.passed, "value": v.value, "where": v.where or None}
            for v in view.thresholds],
        "series": _series(series, last, [a.name for a in agents],
                          cfg.arrival_rate is not None),
    }
    if view is not None:
        run_time = view.run_time
        doc["totals"] = {
            "all": _op(view.totals.combined(), run_time),
            "names": {name: _op(st, run_time) for name, st in sorted(view.totals.ops.items())},
        }
        doc["errors"] = [{"name": n, "type": t, "message": mask_text(m), "count": c}
                         for (n, t, m), c in view.totals.iter_errors()]
        if view.grace is not None:
            g = view.grace
            doc["stop_grace"] = {"seconds": g.seconds, "finished": g.finished,
                                 "cancelled": g.cancelled}
    return doc


# -- the file -------------------------------------------------------------------------
def _temporary(path: Path, kind: str) -> Path:
    """A fresh name beside ``path`` (hidden, so a folder listing does not show it)."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.{kind}"


def check_writable(path: Path, option: str = "--out") -> None:
    """Whether ``path`` can be written at the end of the run: a temporary file is
    created and removed in its folder. ResultFileError names the option, the path and
    why not."""
    if path.is_dir():
        raise ResultFileError(f"{option} {path}: is a directory")
    folder = path.parent
    if not folder.is_dir():
        raise ResultFileError(f"{option} {path}: the folder {folder} does not exist")
    probe = _temporary(path, "probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise ResultFileError(f"{option} {path}: cannot write in {folder}: "
                              f"{e.strerror or e}") from None


WRITE_BUFFER = 1 << 20  # characters of JSON encoded and written at a time


def write_result(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (gzip-compressed when the name ends ``.gz``),
    encoded as it is written: no copy of the whole text is held (an hour of many names
    is hundreds of MB of JSON)."""
    chunks = json.JSONEncoder(allow_nan=False, separators=(",", ":")).iterencode(doc)
    write_text(path, chunks, "the result file")


def write_text(path: Path, chunks: Iterable[str], what: str) -> None:
    """Write the text of ``chunks`` to ``path`` atomically (a temporary file in its
    folder, then a rename), gzip-compressed when the name ends ``.gz``; ResultFileError
    names ``what`` the file is, its path and the OS's reason."""
    tmp = _temporary(path, "tmp")
    try:  # os.open applies the umask, as creating the file directly would
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise ResultFileError(f"cannot write {what} {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as raw:
            out: gzip.GzipFile | io.BufferedWriter = raw
            if path.name.endswith(".gz"):
                out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0)
            try:
                pending: list[str] = []
                size = 0
                for chunk in chunks:
                    pending.append(chunk)
                    size += len(chunk)
                    if size >= WRITE_BUFFER:
                        out.write("".join(pending).encode())
                        pending, size = [], 0
                out.write("".join(pending).encode())
            finally:
                if out is not raw:
                    out.close()  # its trailer; the file stays open
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # an interrupt too: leave no temporary file behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise ResultFileError(f"cannot write {what} {path}: {e.strerror or e}") from None
        raise
