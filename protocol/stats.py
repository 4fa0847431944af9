"""Mergeable statistics: per-operation totals, their histograms, error counts.

Only successful calls are timed into the histogram (``protocol.histogram``); failures
are counted, and their errors grouped by (operation name, exception type, message).
The built-in HTTP client adds, per name, counts by status code and bytes sent and
received (``OpStats.statuses``, ``sent``, ``received``); they stay empty for other
clients.

In the open model (calls on a schedule, ``arrival_rate``) a name also has a
``Schedule``: ``hist`` then times each success from its *intended* start (the corrected
latency, the headline), ``Schedule.service`` from its actual start (service time) and
``Schedule.lag`` the wait between the two (schedule lag); all three over the same
successes, so ``hist`` is ``service + lag`` call by call. ``late`` counts the calls (success
or failure) that started over ``LATE_AFTER_NS`` after their intended start, ``dropped``
the calls that never started (not within ``max_schedule_lag``, or not by the stop).

A ``Totals`` records sparsely (a worker's deltas and totals) or, with ``dense=True``,
accumulates into dense histograms (the master, which merges thousands of deltas a
second with vector adds).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from protocol.calls import MAX_STATUS_CODES
from protocol.histogram import (
    MAX_VALUE_NS,
    DenseHistogram,
    Histogram,
    HistogramFormatError,
)

__all__ = [
    "LAG",
    "LATE_AFTER_NS",
    "MAIN",
    "MAX_ERRORS_PER_NAME",
    "MAX_ERROR_TEXT",
    "OTHER_ERRORS",
    "SERVICE",
    "ErrorKey",
    "OpStats",
    "Schedule",
    "StatsFormatError",
    "Totals",
    "error_key",
    "merge_all",
]

# Sender-side limits, part of the protocol.
MAX_ERRORS_PER_NAME = 100
MAX_ERROR_TEXT = 300
OTHER_ERRORS = "other"
_NO_MIN = MAX_VALUE_NS
_NUMBERS = ("ok", "fail", "sum", "min", "max", "bytes sent", "bytes received")
_INT = {int}
# An operation's latency histograms, by number (on the wire, and in the master's merges):
# every model's ``hist``, and in the open model the service time and the schedule lag.
MAIN, SERVICE, LAG = 0, 1, 2
# A call of the open model is late when it started this long after its intended start:
# past the event loop's timer resolution (a millisecond) and ordinary jitter, so a late
# call means every client was busy, or the generator could not keep up.
LATE_AFTER_NS = 10_000_000


class StatsFormatError(ValueError):
    """A statistics payload from a peer does not have the documented shape."""


class Schedule:
    """The open model's figures of one operation name (see the module docstring)."""

    __slots__ = ("dropped", "lag", "late", "service")

    def __init__(self, service: Histogram | DenseHistogram,
                 lag: Histogram | DenseHistogram, late: int = 0, dropped: int = 0) -> None:
        self.late = late
        self.dropped = dropped
        self.service = service
        self.lag = lag

    def merge_counts(self, other: Schedule) -> None:
        self.late += other.late
        self.dropped += other.dropped

    def reset(self) -> None:
        self.late = self.dropped = 0
        self.service.clear()
        self.lag.clear()

    def to_wire(self) -> list[Any]:
        return [self.late, self.dropped, *self.service.to_wire(), *self.lag.to_wire()]


class OpStats:
    """Totals of one operation name. The hot path updates the fields directly."""

    __slots__ = ("fail", "hist", "max_ns", "min_ns", "name", "ok", "received", "sched",
                 "sent", "statuses", "step", "sum_ns")

    def __init__(self, name: str, dense: bool = False, full: bool = False) -> None:
        self.name = name
        self.ok = 0
        self.fail = 0
        self.sum_ns = 0
        self.min_ns = _NO_MIN
        self.max_ns = 0
        self.hist: Histogram | DenseHistogram = (
            DenseHistogram(full) if dense or full else Histogram())
        self.statuses: dict[int, int] = {}  # HTTP status code -> responses (built-in client)
        self.sent = 0  # bytes of requests (built-in client)
        self.received = 0  # bytes of responses (built-in client)
        self.sched: Schedule | None = None  # the open model's figures; None in the closed
        # a named step's row (``ClientProtocol.step``): a part of calls counted under
        # another name, so left out of the totals over every name
        self.step = False

    def schedule(self) -> Schedule:
        """The open model's figures, made on first use."""
        if self.sched is None:
            self.sched = Schedule(self.hist.empty_like(), self.hist.empty_like())
        return self.sched

    def histogram(self, kind: int) -> Histogram | DenseHistogram:
        """Histogram ``kind`` (MAIN, SERVICE, LAG); SERVICE and LAG make the schedule."""
        if kind == MAIN:
            return self.hist
        sched = self.schedule()
        return sched.service if kind == SERVICE else sched.lag

    def record_ok(self, elapsed_ns: int) -> None:
        self.ok += 1
        self.sum_ns += elapsed_ns
        if elapsed_ns < self.min_ns:
            self.min_ns = elapsed_ns
        if elapsed_ns > self.max_ns:
            self.max_ns = elapsed_ns
        self.hist.record(elapsed_ns)

    def merge(self, other: OpStats) -> None:
        self.merge_counts(other)
        self.hist.merge(other.hist)
        if other.sched is not None:
            sched = self.schedule()
            sched.service.merge(other.sched.service)
            sched.lag.merge(other.sched.lag)

    def merge_counts(self, other: OpStats) -> None:
        """Merge everything but the histogram (the master adds those in batches)."""
        self.ok += other.ok
        self.fail += other.fail
        self.sum_ns += other.sum_ns
        if other.min_ns < self.min_ns:
            self.min_ns = other.min_ns
        if other.max_ns > self.max_ns:
            self.max_ns = other.max_ns
        if other.statuses:
            statuses = self.statuses
            for code, n in other.statuses.items():
                statuses[code] = statuses.get(code, 0) + n
        self.sent += other.sent
        self.received += other.received
        if other.step:
            self.step = True
        theirs = other.sched
        if theirs is not None:  # (inlined: the master merges thousands a second)
            mine = self.sched
            if mine is None:
                mine = self.schedule()
            mine.late += theirs.late
            mine.dropped += theirs.dropped

    def reset(self) -> None:
        """Zero in place: hot loops keep references to ``hist.counts``."""
        self.ok = self.fail = self.sum_ns = self.max_ns = self.sent = self.received = 0
        self.min_ns = _NO_MIN
        self.hist.clear()
        self.statuses.clear()
        if self.sched is not None:
            self.sched.reset()

    @property
    def dropped(self) -> int:
        return 0 if self.sched is None else self.sched.dropped

    @property
    def late(self) -> int:
        return 0 if self.sched is None else self.sched.late

    @property
    def min_value(self) -> int | None:
        return None if self.ok == 0 else self.min_ns

    @property
    def mean_ns(self) -> float | None:
        return None if self.ok == 0 else self.sum_ns / self.ok

    def percentile(self, q: float) -> int | None:
        """A bucket midpoint, clamped to the exact min and max."""
        p = self.hist.percentile(q)
        if p is None:
            return None
        return min(max(p, self.min_ns), self.max_ns)

    def to_wire(self) -> list[Any]:
        indexes, counts = self.hist.to_wire()
        mn = 0 if self.ok == 0 else self.min_ns
        statuses = [[code, n] for code, n in self.statuses.items()]
        sched = [] if self.sched is None else self.sched.to_wire()
        return [self.name, self.ok, self.fail, self.sum_ns, mn, self.max_ns, indexes, counts,
                statuses, self.sent, self.received, sched, self.step]

    @classmethod
    def parse(cls, obj: Any) -> tuple[OpStats, list[tuple[Any, Any]]]:
        """Check every wire field but the histograms: the operation, without its
        histograms until ``attach``, and each histogram's two raw byte strings (MAIN,
        then in the open model SERVICE and LAG)."""
        if not isinstance(obj, list) or len(obj) != 13:
            raise StatsFormatError("operation stats: expected an array of 13")
        (name, ok, fail, sum_ns, mn, mx, indexes, counts, statuses, sent, received,
         sched, step) = obj
        if not isinstance(name, str) or not name:
            raise StatsFormatError("operation stats: name must be a non-empty string")
        numbers = (ok, fail, sum_ns, mn, mx, sent, received)
        if set(map(type, numbers)) != _INT or min(numbers) < 0:
            for i, v in enumerate(numbers):
                if type(v) is not int or v < 0:
                    raise StatsFormatError(f"operation stats {name!r}: bad {_NUMBERS[i]} {v!r}")
        st = cls.__new__(cls)  # every field set here (``__init__`` costs the master)
        st.name = name
        st.ok, st.fail, st.sum_ns, st.max_ns = ok, fail, sum_ns, mx
        st.min_ns = mn if ok else _NO_MIN
        st.sent, st.received = sent, received
        st.hist = Histogram()  # empty until attach
        st.statuses = {} if statuses == [] else _statuses_from_wire(name, statuses)
        st.sched = None
        if type(step) is not bool:
            raise StatsFormatError(f"operation stats {name!r}: step must be true or false")
        st.step = step
        pairs = [(indexes, counts)]
        if sched != []:
            if not (isinstance(sched, list) and len(sched) == 6 and type(sched[0]) is int
                    and type(sched[1]) is int and sched[0] >= 0 and sched[1] >= 0):
                raise StatsFormatError(f"operation stats {name!r}: bad schedule figures "
                                       f"{str(sched)[:80]}")
            st.sched = Schedule(Histogram(), Histogram(), sched[0], sched[1])  # (attach)
            pairs += [(sched[2], sched[3]), (sched[4], sched[5])]
        return st, pairs

    def attach(self, hists: list[Histogram], totals: list[int]) -> None:
        """Give a parsed operation its checked histograms (as many as ``parse`` gave raw),
        of ``totals`` calls each: every one over the same successes."""
        self.check_totals(totals)
        self.hist = hists[0]
        if self.sched is not None:
            self.sched.service, self.sched.lag = hists[1], hists[2]

    def check_totals(self, totals: list[int]) -> None:
        """Its histograms' totals (as many as ``parse`` gave raw) are each its ok count."""
        if any(total != self.ok for total in totals):
            raise StatsFormatError(f"operation stats {self.name!r}: histogram total != ok count")

    @classmethod
    def from_wire(cls, obj: Any) -> OpStats:
        st, pairs = cls.parse(obj)
        st.attach(*_checked(st.name, pairs))
        return st


def _checked(name: str, pairs: list[tuple[Any, Any]]) -> tuple[list[Histogram], list[int]]:
    """The histograms of raw pairs, and their totals (StatsFormatError naming ``name``)."""
    try:
        hists = [Histogram.from_wire(indexes, counts) for indexes, counts in pairs]
    except HistogramFormatError as e:
        raise StatsFormatError(f"operation stats {name!r}: {e}") from None
    return hists, [h.total for h in hists]


def _statuses_from_wire(name: str, obj: Any) -> dict[int, int]:
    if not isinstance(obj, list) or len(obj) > MAX_STATUS_CODES:
        raise StatsFormatError(f"operation stats {name!r}: status codes must be an array of "
                               f"at most {MAX_STATUS_CODES}")
    out: dict[int, int] = {}
    for pair in obj:
        if not (isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int
                and 100 <= pair[0] <= 999 and type(pair[1]) is int and pair[1] > 0
                and pair[0] not in out):
            raise StatsFormatError(f"operation stats {name!r}: bad status count "
                                   f"{str(pair)[:40]}")
        out[pair[0]] = pair[1]
    return out


ErrorKey = tuple[str, str, str]  # (operation name, exception type, message)


def error_key(name: str, exc: BaseException) -> ErrorKey:
    text = str(exc) or repr(exc)
    return name, type(exc).__name__, text[:MAX_ERROR_TEXT]


@dataclass(slots=True)
class Totals:
    """Per-name operation stats and grouped errors: a delta or a cumulative total.

    ``dense``: its histograms are ``DenseHistogram`` (for accumulating many merges);
    ``full``: dense over every bucket from the start (for the few that take every delta)."""

    ops: dict[str, OpStats] = field(default_factory=dict)
    errors: dict[ErrorKey, int] = field(default_factory=dict)
    dense: bool = False
    full: bool = False
    _distinct: dict[str, int] = field(default_factory=dict, repr=False)

    def op(self, name: str) -> OpStats:
        st = self.ops.get(name)
        if st is None:
            st = self.ops[name] = OpStats(name, self.dense, self.full)
        return st

    def add_error(self, key: ErrorKey, count: int = 1) -> None:
        """Count an error; past MAX_ERRORS_PER_NAME distinct ones a name's go to 'other'."""
        errors = self.errors
        if key not in errors:
            name = key[0]
            n = self._distinct.get(name, 0)
            if n >= MAX_ERRORS_PER_NAME:
                key = (name, OTHER_ERRORS, f"more than {MAX_ERRORS_PER_NAME} distinct errors")
                if key not in errors:
                    errors[key] = 0
            else:
                self._distinct[name] = n + 1
                errors[key] = 0
        errors[key] += count

    def merge(self, other: Totals) -> None:
        for name, st in other.ops.items():
            self.op(name).merge(st)
        self._merge_errors(other)

    def merge_counts(self, other: Totals) -> None:
        """Merge everything but the histograms (``OpStats.merge_counts``)."""
        ops = self.ops
        for name, st in other.ops.items():
            mine = ops.get(name)
            if mine is None:
                mine = self.op(name)
            mine.merge_counts(st)
        if other.errors:
            self._merge_errors(other)

    def _merge_errors(self, other: Totals) -> None:
        for key, count in other.errors.items():
            self.add_error(key, count)

    def reset(self) -> None:
        for st in self.ops.values():
            st.reset()
        self.errors.clear()
        self._distinct.clear()

    def combined(self) -> OpStats:
        """Every operation but named steps merged into one, for the headline figures (a
        step's calls are already counted under their call's name)."""
        out = OpStats("total", self.dense, self.full)
        for st in self.ops.values():
            if not st.step:
                out.merge(st)
        return out

    @property
    def open_model(self) -> bool:
        """Whether any name has the open model's figures."""
        return any(st.sched is not None for st in self.ops.values())

    @property
    def ok(self) -> int:
        """Successful calls, every name but named steps."""
        return sum(st.ok for st in self.ops.values() if not st.step)

    @property
    def fail(self) -> int:
        """Failed calls, every name but named steps."""
        return sum(st.fail for st in self.ops.values() if not st.step)

    def is_empty(self) -> bool:
        return not self.errors and all(st.ok == 0 and st.fail == 0 and st.dropped == 0
                                       for st in self.ops.values())

    def to_wire(self) -> list[Any]:
        # a name with HTTP figures but no call ended yet (requests of a long call) too, and
        # one with only late or dropped calls
        ops = [st.to_wire() for st in self.ops.values()
               if st.ok or st.fail or st.statuses or st.sent or st.received or st.late
               or st.dropped]
        errors = [[n, t, m, c] for (n, t, m), c in self.errors.items()]
        return [ops, errors]

    @classmethod
    def parse(cls, obj: Any) -> tuple[Totals, list[tuple[OpStats, list[tuple[Any, Any]]]]]:
        """Check every wire field but the histograms (``OpStats.parse``): the totals, and
        each operation with its histograms' raw byte strings, to ``attach``."""
        if not isinstance(obj, list) or len(obj) != 2:
            raise StatsFormatError("totals: expected [operations, errors]")
        ops, errors = obj
        if not isinstance(ops, list) or not isinstance(errors, list):
            raise StatsFormatError("totals: operations and errors must be arrays")
        out = cls()
        parts = []
        for o in ops:
            part = OpStats.parse(o)
            name = part[0].name
            if name in out.ops:
                raise StatsFormatError(f"totals: operation {name!r} listed twice")
            out.ops[name] = part[0]
            parts.append(part)
        for e in errors:
            if not (type(e) is list and len(e) == 4 and type(e[0]) is str and type(e[1]) is str
                    and type(e[2]) is str and type(e[3]) is int and e[3] > 0):
                raise StatsFormatError(f"totals: bad error entry {str(e)[:80]}")
            out.add_error((e[0], e[1], e[2][:MAX_ERROR_TEXT]), e[3])
        return out, parts

    @classmethod
    def from_wire(cls, obj: Any) -> Totals:
        out, parts = cls.parse(obj)
        for st, pairs in parts:
            st.attach(*_checked(st.name, pairs))
        return out

    def iter_errors(self) -> Iterator[tuple[ErrorKey, int]]:
        """Errors, most frequent first."""
        return iter(sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0])))


def merge_all(parts: Iterable[Totals], dense: bool = True) -> Totals:
    """``parts`` merged into one (dense by default: merging many is what it is for)."""
    out = Totals(dense=dense)
    for p in parts:
        out.merge(p)
    return out
