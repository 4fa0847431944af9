"""Reading a result file back (``loadmaster report``, ``loadmaster compare``).

A result file is checked before anything is drawn from it: it must be JSON (gzip-
compressed or not) whose top names our tool, of the schema version this loadmaster
writes, valid against that schema (``schemas/result-schema.json``), and with histograms
and series that obey the rules the schema cannot state (indexes in range and increasing,
counts matching the calls, one entry a second). Every failure is a ``ReportInputError``
naming the file and what is wrong; the CLI makes it exit 2.

``final_view`` rebuilds the final block from the document, so ``loadmaster report``
prints it as the run did (in the open model with its schedule, late and dropped calls,
service times and schedule lags). A file written before the open model lacks its
fields: each reads as null, the closed model.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from jsonschema import Draft202012Validator, TypeChecker, validators
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator

from loadmaster.console import AgentLine, FinalView, GraceView, ScheduleView
from loadmaster.result import SCHEMA_VERSION, TOOL, decode_histogram
from loadmaster.thresholds import verdicts_of
from protocol import __version__
from protocol.histogram import MAX_COUNT, MAX_INDEX, DenseHistogram, bucket_value
from protocol.stats import OpStats, Totals

__all__ = [
    "ReportInputError",
    "check_document",
    "check_result",
    "dense_counts",
    "final_view",
    "load_result",
    "percentiles",
    "read_json",
    "schedule_of",
    "totals_of",
    "validator",
]

SCHEMAS = Path(__file__).resolve().parent / "schemas"
GZIP_MAGIC = b"\x1f\x8b"
MESSAGE_CHARS = 200  # of a schema error's text (it may quote a whole array)
MAX_NUMBER = 2**64  # no figure of ours is larger: counts, nanoseconds, bytes
MAX_TIME = 1e11  # unix seconds (year 5138): t0 and end beyond it are not times
# the series' open-model arrays (null, or absent in older files, in the closed model)
OPEN_SERIES_TOTALS = ("late", "dropped")
OPEN_SERIES_HISTS = ("service_hist", "lag_hist")
OPEN_SERIES = (*OPEN_SERIES_TOTALS, *OPEN_SERIES_HISTS)


class ReportInputError(Exception):
    """A file given to report or compare cannot be used; the message names it."""


def _is_int(checker: TypeChecker, instance: object) -> bool:
    return type(instance) is int  # not 3.0, which JSON Schema counts as an integer


_Validator: type[Validator] = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_int))


@functools.cache
def validator(name: str) -> Validator:
    """The validator of ``schemas/NAME-schema.json`` (integers must be written as such)."""
    schema = json.loads((SCHEMAS / f"{name}-schema.json").read_text())
    return _Validator(schema)


def read_json(path: Path) -> Any:
    """The JSON value in ``path`` (gunzipped when it starts with gzip's magic bytes)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ReportInputError(f"{path}: cannot read: {e.strerror or e}") from None
    if raw.startswith(GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise ReportInputError(f"{path}: truncated (the gzip stream ends early)") from None
        except (OSError, zlib.error) as e:
            raise ReportInputError(f"{path}: not a valid gzip file ({e})") from None
    if not raw.strip():
        raise ReportInputError(f"{path}: empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ReportInputError(f"{path}: not a result file (not UTF-8 text)") from None
    try:
        return json.loads(text, parse_constant=_no_constant, parse_int=_int, parse_float=_float)
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()):
            raise ReportInputError(f"{path}: truncated (the JSON ends early, at line "
                                   f"{e.lineno} column {e.colno})") from None
        raise ReportInputError(f"{path}: not a result file (not JSON: {e})") from None
    except _BadNumber as e:
        raise ReportInputError(f"{path}: not a result file ({e})") from None
    except RecursionError:
        raise ReportInputError(f"{path}: not a result file (nested too deeply)") from None


class _BadNumber(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _BadNumber(f"{name} is not a JSON number")


def _int(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_NUMBER:
        raise _BadNumber(f"the number {text[:30]} is out of range")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not abs(value) <= MAX_NUMBER:
        raise _BadNumber(f"the number {text[:30]} is out of range")
    return value


def check_document(path: Path, doc: Any, kind: str, tool_key: str, version_key: str,
                   version: int) -> None:
    """``doc`` is ours (``tool_key`` names TOOL), of ``version``, valid against the
    ``kind`` schema; else ReportInputError naming ``path``."""
    what = f"a {TOOL} {kind} file"
    if kind == "result" and isinstance(doc, dict) and doc.get("kind") == "summary":
        raise ReportInputError(f"{path}: a JSON summary, not a result file: this needs the "
                               f"result file (loadmaster run --out)")
    if not isinstance(doc, dict):
        raise ReportInputError(f"{path}: not {what} (its JSON is not an object)")
    tool = doc.get(tool_key)
    if not (isinstance(tool, dict) and tool.get("name") == TOOL):
        raise ReportInputError(f"{path}: not {what} (no \"{tool_key}\": {{\"name\": "
                               f"\"{TOOL}\"}} at its top)")
    if doc.get(version_key) != version:
        raise ReportInputError(
            f"{path}: {kind} file of schema version {doc.get(version_key)!r} (written by "
            f"{TOOL} {tool.get('version')!r}); this loadmaster ({__version__}) reads version "
            f"{version}")
    error = best_match(validator(kind).iter_errors(doc))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "its top"
        message = error.message
        if len(message) > MESSAGE_CHARS:
            message = message[:MESSAGE_CHARS] + "..."
        raise ReportInputError(f"{path}: at {where}: {message}")


def _check_hist(path: Path, where: str, hist: Mapping[str, Sequence[int]],
                total: int | None, at_most: bool = False) -> None:
    """``hist`` valid and holding ``total`` calls (``at_most``: no more)."""
    gaps, counts = hist["i"], hist["c"]
    if len(gaps) != len(counts):
        raise ReportInputError(f"{path}: at {where}: {len(gaps)} bucket indexes for "
                               f"{len(counts)} counts")
    if not gaps:
        bad = ""
    elif gaps[0] < 0 or min(gaps[1:], default=1) < 1:
        bad = "bucket indexes must increase"
    elif sum(gaps) > MAX_INDEX:
        bad = f"a bucket index over {MAX_INDEX}"
    elif min(counts) < 0 or max(counts) > MAX_COUNT:
        bad = "a count out of range"
    elif total is not None and (sum(counts) > total if at_most else sum(counts) != total):
        bad = f"the histogram holds {sum(counts)} calls where ok is {total}"
    else:
        bad = ""
    if bad:
        raise ReportInputError(f"{path}: at {where}: {bad}")


def _check_op(path: Path, where: str, st: Mapping[str, Any], incomplete: bool) -> None:
    """One name's (or all names') histograms hold its successes; in the open model its
    scheduled calls are its ok, fail and dropped ones. A worker lost before its final
    totals is counted from its live deltas, without its service times and lags: in an
    incomplete run those histograms may hold fewer."""
    _check_hist(path, f"{where}/hist", st["hist"], st["ok"])
    sched = st.get("open")
    if sched is None:
        return
    for key in ("service", "lag"):
        _check_hist(path, f"{where}/open/{key}/hist", sched[key]["hist"], st["ok"],
                    at_most=incomplete)
    if sched["scheduled"] != st["ok"] + st["fail"] + sched["dropped"]:
        raise ReportInputError(f"{path}: at {where}/open/scheduled: {sched['scheduled']} "
                               f"is not ok + fail + dropped")


def _check_figures(path: Path, doc: Mapping[str, Any]) -> None:
    """What the schema cannot say: times that are times, a final block's figures all
    there, histograms valid and of the right size, series arrays one entry a second."""
    for key in ("t0", "end"):
        if doc[key] is not None and not 0 <= doc[key] <= MAX_TIME:
            raise ReportInputError(f"{path}: at {key}: {doc[key]} is not a time")
    totals = doc["totals"]
    if totals is not None:
        for key in ("run_time", "users"):
            if doc[key] is None:
                raise ReportInputError(f"{path}: at {key}: null where totals are given")
        _check_op(path, "totals/all", totals["all"], doc["incomplete"])
        for name, st in totals["names"].items():
            _check_op(path, f"totals/names/{name}", st, doc["incomplete"])
    series = doc["series"]
    n = series["seconds"]

    def check_len(where: str, values: Sequence[Any]) -> None:
        if len(values) != n:
            raise ReportInputError(f"{path}: at series/{where}: {len(values)} entries for "
                                   f"{n} seconds")

    for key in ("clients", "ok", "fail"):
        check_len(key, series[key])
    for key in OPEN_SERIES_TOTALS:
        if series.get(key) is not None:
            check_len(key, series[key])
    for name, s in series["names"].items():
        for key in ("ok", "fail", "hist", *OPEN_SERIES):
            if s.get(key) is not None:
                check_len(f"names/{name}/{key}", s[key])
        for key in ("hist", *OPEN_SERIES_HISTS):
            if s.get(key) is None:
                continue
            for k, (hist, ok) in enumerate(zip(s[key], s["ok"], strict=True)):
                _check_hist(path, f"series/names/{name}/{key}/{k}", hist, ok)
    for agent, s in series["agents"].items():
        for key in ("ok", "fail", "cpu_seconds", "cpu_span", "loop_lag_s"):
            check_len(f"agents/{agent}/{key}", s[key])


def check_result(path: Path, doc: Any) -> dict[str, Any]:
    """``doc``, read from ``path``, checked as a result document."""
    check_document(path, doc, "result", "tool", "version", SCHEMA_VERSION)
    _check_figures(path, doc)
    try:
        verdicts_of(doc.get("thresholds", []))
    except ValueError as e:
        raise ReportInputError(f"{path}: at thresholds: {e}") from None
    return dict(doc)


def load_result(path: Path) -> dict[str, Any]:
    """The result document in ``path``, checked; ReportInputError names what is wrong."""
    return check_result(path, read_json(path))


# -- the final block, rebuilt ---------------------------------------------------------
def _dense(hist: Mapping[str, Sequence[int]]) -> DenseHistogram:
    counts = decode_histogram(hist)
    out = DenseHistogram()
    if counts:
        out.add(np.fromiter(counts, dtype=np.int64),
                np.fromiter(counts.values(), dtype=np.uint64))
    return out


def _op(name: str, st: Mapping[str, Any]) -> OpStats:
    out = OpStats(name, dense=True)
    out.ok, out.fail, out.sum_ns = st["ok"], st["fail"], st["sum_ns"]
    if st["ok"]:
        out.min_ns, out.max_ns = st["min_ns"], st["max_ns"]
    out.hist = _dense(st["hist"])
    out.statuses = {int(code): n for code, n in st["statuses"].items()}
    out.sent, out.received = st["bytes_sent"], st["bytes_received"]
    out.step = st.get("step", False)
    figures = st.get("open")
    if figures is not None:
        sched = out.schedule()
        sched.late, sched.dropped = figures["late"], figures["dropped"]
        sched.service = _dense(figures["service"]["hist"])
        sched.lag = _dense(figures["lag"]["hist"])
    return out


def totals_of(doc: Mapping[str, Any]) -> Totals:
    """The run's totals (per name, with their errors) as the final block had them."""
    totals = Totals(dense=True)
    if doc["totals"] is None:
        return totals
    for name, st in doc["totals"]["names"].items():
        totals.ops[name] = _op(name, st)
    for e in doc["errors"]:
        totals.errors[(e["name"], e["type"], e["message"])] = e["count"]
    return totals


def final_view(doc: Mapping[str, Any]) -> FinalView | None:
    """The final block of the run, None when it failed before having one."""
    if doc["totals"] is None or doc["run_time"] is None:
        return None
    lines = [AgentLine(name=a["name"], workers=a["workers"], clients=a["clients"],
                       rps=a["rps"] or 0.0, ok=a["ok"] or 0, fail=a["fail"] or 0,
                       state=a["state"], clock_offset=a["clock_offset_s"],
                       start_skew=a["start_skew_s"] or 0.0, cpu=a["cpu"],
                       loop_lag=a["max_loop_lag_s"], saturated=a["saturated"])
             for a in doc["agents"]]
    grace = doc["stop_grace"]
    return FinalView(
        run_time=doc["run_time"], users=doc["users"] or 0, totals=totals_of(doc),
        agents=lines, missed_deltas=doc["missed_deltas"], notes=list(doc["notes"]),
        incomplete=doc["incomplete"], users_planned=doc["users_planned"],
        grace=None if grace is None else GraceView(grace["seconds"], grace["finished"],
                                                   grace["cancelled"]),
        schedule=schedule_of(doc), thresholds=verdicts_of(doc.get("thresholds", [])))


def schedule_of(doc: Mapping[str, Any]) -> ScheduleView | None:
    """The open model's schedule as the final block showed it; None in the closed model."""
    sched = doc.get("schedule")
    if sched is None:
        return None
    text = sched["text"]
    if text is None:  # no final block showed it
        text = f"{sched['rate_per_s']:g}/s"
    return ScheduleView(rate=sched["rate_per_s"], arrivals=sched["arrivals"], text=text)


# -- histograms of the file as dense arrays (reports compute many percentiles) ----------
@functools.cache
def bucket_values() -> npt.NDArray[np.int64]:
    """Every bucket's value (its midpoint, ns), by index."""
    return np.array([bucket_value(i) for i in range(MAX_INDEX + 1)], dtype=np.int64)


def dense_counts(hist: Mapping[str, Sequence[int]], low: int = 0,
                 high: int = MAX_INDEX) -> npt.NDArray[np.int64]:
    """A file histogram as counts over the bucket indexes ``low..high`` (all its buckets
    must be within them)."""
    out = np.zeros(high - low + 1, dtype=np.int64)
    if hist["i"]:
        out[np.cumsum(np.asarray(hist["i"], dtype=np.int64)) - low] = hist["c"]
    return out


def percentiles(counts: npt.NDArray[np.int64], qs: Sequence[float],
                values: npt.NDArray[np.int64] | None = None) -> list[int | None]:
    """The nearest-rank percentiles ``qs`` (0 < q <= 1) of dense ``counts`` whose buckets
    have ``values`` (by default every bucket's), in ns (the rule of $defs/histogram in
    the result schema); None when empty."""
    running = np.cumsum(counts)
    total = int(running[-1]) if running.size else 0
    if total == 0:
        return [None] * len(qs)
    ranks = [max(1, math.ceil(q * total - 1e-9)) for q in qs]
    where = np.searchsorted(running, ranks, side="left")
    if values is None:
        values = bucket_values()
    return [int(values[i]) for i in where]


# -- many seconds at once: the series' histograms flattened (the charts, the CSV) -----
# (second 0.., bucket index, count), three parallel arrays
Buckets = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]


def flatten_series(hists: Sequence[Mapping[str, Sequence[int]]]) -> Buckets:
    """Every non-empty bucket of one histogram per second, as three parallel arrays."""
    lengths = np.fromiter((len(h["i"]) for h in hists), dtype=np.int64, count=len(hists))
    size = int(lengths.sum())
    gaps = np.fromiter(itertools.chain.from_iterable(h["i"] for h in hists), dtype=np.int64,
                       count=size)
    counts = np.fromiter(itertools.chain.from_iterable(h["c"] for h in hists),
                         dtype=np.int64, count=size)
    seconds = np.repeat(np.arange(len(hists), dtype=np.int64), lengths)
    # the indexes are running sums of the gaps, restarting at each histogram
    running = np.cumsum(gaps)
    starts = np.cumsum(lengths) - lengths
    before = np.zeros(len(hists), dtype=np.int64)
    later = starts > 0
    before[later] = running[starts[later] - 1]
    return seconds, running - np.repeat(before, lengths), counts


def second_quantiles(buckets: Buckets, n: int,
                     qs: Sequence[float]) -> list[npt.NDArray[np.float64]]:
    """Per second, each nearest-rank quantile in ns (NaN: no success that second), as
    protocol.histogram.Histogram.percentile gives it for that second's merged counts."""
    out = [np.full(n, np.nan) for _ in qs]
    sec, idx, cnt = buckets
    if sec.size == 0:
        return out
    key = sec * (MAX_INDEX + 1) + idx
    if not bool(np.all(key[1:] >= key[:-1])):  # several names merged: sort by second, bucket
        order = np.argsort(key, kind="stable")
        sec, idx, cnt = sec[order], idx[order], cnt[order]
    starts = np.flatnonzero(np.diff(sec, prepend=-1))  # each second's first bucket
    running = np.cumsum(cnt)  # increasing: every count is at least 1
    base = np.zeros(starts.size, dtype=np.int64)  # the running count before each second
    base[1:] = running[starts[1:] - 1]
    total = running[np.append(starts[1:], sec.size) - 1] - base
    values = bucket_values()
    for q, column in zip(qs, out, strict=True):
        # the epsilon as protocol.histogram's nearest rank has it (float drift: 0.9 * 10)
        rank = np.maximum(1, np.ceil(q * total - 1e-9)).astype(np.int64)
        reached = np.searchsorted(running, base + rank)  # the first bucket reaching it
        column[sec[starts]] = values[idx[reached]]
    return out


def merge_flat(flat: Iterable[Buckets]) -> Buckets:
    parts = list(flat)
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return (np.concatenate([b[0] for b in parts]), np.concatenate([b[1] for b in parts]),
            np.concatenate([b[2] for b in parts]))
