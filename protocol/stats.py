"""Mergeable statistics: a log-linear latency histogram, per-operation totals, error counts.

Theory of operation
-------------------
Latencies are integer nanoseconds. Values below 256 have a bucket each (exact); above
that, each power of two is split into 128 equal buckets, chosen by the value's top 8
bits::

    s = v.bit_length() - 8          # how many low bits the bucket ignores
    index = v            if s <= 0
    index = (s << 7) + (v >> s)     otherwise

so indexes are contiguous (0..255 are exact values, each later block of 128 covers one
power of two). A bucket spans ``2**s`` values starting at ``mantissa << s`` with
``mantissa >= 128``; reporting its integer midpoint is off by at most
``2**(s-1) / (128 * 2**s) = 1/256``, a relative error under 0.4%, for every value.
The layout is a protocol constant (``HISTOGRAM_LAYOUT``): merging two histograms is
adding their counts, so workers, agents and the master can merge in any order.

Only successful calls are timed into the histogram; failures are counted, and their
errors grouped by (operation name, exception type, message).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "HISTOGRAM_LAYOUT",
    "MAX_ERRORS_PER_NAME",
    "MAX_ERROR_TEXT",
    "MAX_INDEX",
    "MAX_VALUE_NS",
    "OTHER_ERRORS",
    "RELATIVE_ERROR",
    "SUB_BUCKET_BITS",
    "ErrorKey",
    "Histogram",
    "OpStats",
    "StatsFormatError",
    "Totals",
    "bucket_bounds",
    "bucket_index",
    "bucket_value",
    "error_key",
    "merge_all",
]


HISTOGRAM_LAYOUT = 1
SUB_BUCKET_BITS = 7
# A bucket's midpoint is within this fraction of any value it holds.
RELATIVE_ERROR = 1 / 256
MAX_VALUE_NS = (1 << 63) - 1
MAX_INDEX = ((MAX_VALUE_NS.bit_length() - 8) << SUB_BUCKET_BITS) + 255
# Sender-side limits, part of the protocol.
MAX_ERRORS_PER_NAME = 100
MAX_ERROR_TEXT = 300
OTHER_ERRORS = "other"
_NO_MIN = MAX_VALUE_NS


class StatsFormatError(ValueError):
    """A statistics payload from a peer does not have the documented shape."""


def bucket_index(value_ns: int) -> int:
    """The bucket that holds ``value_ns`` (negative values count as 0)."""
    if value_ns <= 0:
        return 0
    if value_ns > MAX_VALUE_NS:
        value_ns = MAX_VALUE_NS
    s = value_ns.bit_length() - 8
    return value_ns if s <= 0 else (s << SUB_BUCKET_BITS) + (value_ns >> s)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The inclusive lowest and highest value of bucket ``index``."""
    if index < 256:
        return index, index
    s = (index >> SUB_BUCKET_BITS) - 1
    low = (index - (s << SUB_BUCKET_BITS)) << s
    return low, low + (1 << s) - 1


def bucket_value(index: int) -> int:
    """The integer midpoint of bucket ``index``: what the histogram reports for it."""
    low, high = bucket_bounds(index)
    return (low + high) // 2


class Histogram:
    """Counts of latencies per log-linear bucket; see the module docstring."""

    __slots__ = ("counts",)

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = counts if counts is not None else {}

    def record(self, value_ns: int, count: int = 1) -> None:
        i = bucket_index(value_ns)
        self.counts[i] = self.counts.get(i, 0) + count

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for i, c in other.counts.items():
            counts[i] = counts.get(i, 0) + c

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def percentile(self, q: float) -> int | None:
        """The nearest-rank ``q`` quantile (0 < q <= 1) as a bucket midpoint, in ns."""
        total = self.total
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total - 1e-9))  # the epsilon absorbs float drift (0.9*10)
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return bucket_value(i)
        return bucket_value(max(self.counts))

    def to_wire(self) -> tuple[list[int], list[int]]:
        indexes = sorted(self.counts)
        return indexes, [self.counts[i] for i in indexes]

    @classmethod
    def from_wire(cls, indexes: Any, counts: Any) -> Histogram:
        if not isinstance(indexes, list) or not isinstance(counts, list):
            raise StatsFormatError("histogram: indexes and counts must be arrays")
        if len(indexes) != len(counts):
            raise StatsFormatError("histogram: indexes and counts differ in length")
        out: dict[int, int] = {}
        for i, c in zip(indexes, counts, strict=True):
            if type(i) is not int or not 0 <= i <= MAX_INDEX:
                raise StatsFormatError(f"histogram: bad bucket index {i!r}")
            if type(c) is not int or c <= 0:
                raise StatsFormatError(f"histogram: bad count {c!r}")
            out[i] = out.get(i, 0) + c
        return cls(out)


class OpStats:
    """Totals of one operation name. The hot path updates the fields directly."""

    __slots__ = ("fail", "hist", "max_ns", "min_ns", "name", "ok", "sum_ns")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ok = 0
        self.fail = 0
        self.sum_ns = 0
        self.min_ns = _NO_MIN
        self.max_ns = 0
        self.hist = Histogram()

    def record_ok(self, elapsed_ns: int) -> None:
        self.ok += 1
        self.sum_ns += elapsed_ns
        if elapsed_ns < self.min_ns:
            self.min_ns = elapsed_ns
        if elapsed_ns > self.max_ns:
            self.max_ns = elapsed_ns
        self.hist.record(elapsed_ns)

    def merge(self, other: OpStats) -> None:
        self.ok += other.ok
        self.fail += other.fail
        self.sum_ns += other.sum_ns
        self.min_ns = min(self.min_ns, other.min_ns)
        self.max_ns = max(self.max_ns, other.max_ns)
        self.hist.merge(other.hist)

    def reset(self) -> None:
        """Zero in place: hot loops keep references to ``hist.counts``."""
        self.ok = self.fail = self.sum_ns = self.max_ns = 0
        self.min_ns = _NO_MIN
        self.hist.counts.clear()

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
        return [self.name, self.ok, self.fail, self.sum_ns, mn, self.max_ns, indexes, counts]

    @classmethod
    def from_wire(cls, obj: Any) -> OpStats:
        if not isinstance(obj, list) or len(obj) != 8:
            raise StatsFormatError("operation stats: expected an array of 8")
        name, ok, fail, sum_ns, mn, mx, indexes, counts = obj
        if not isinstance(name, str) or not name:
            raise StatsFormatError("operation stats: name must be a non-empty string")
        for label, v in (("ok", ok), ("fail", fail), ("sum", sum_ns), ("min", mn), ("max", mx)):
            if type(v) is not int or v < 0:
                raise StatsFormatError(f"operation stats {name!r}: bad {label} {v!r}")
        st = cls(name)
        st.hist = Histogram.from_wire(indexes, counts)
        if st.hist.total != ok:
            raise StatsFormatError(f"operation stats {name!r}: histogram total != ok count")
        st.ok, st.fail, st.sum_ns, st.max_ns = ok, fail, sum_ns, mx
        st.min_ns = mn if ok else _NO_MIN
        return st


ErrorKey = tuple[str, str, str]  # (operation name, exception type, message)


def error_key(name: str, exc: BaseException) -> ErrorKey:
    text = str(exc) or repr(exc)
    return name, type(exc).__name__, text[:MAX_ERROR_TEXT]


@dataclass(slots=True)
class Totals:
    """Per-name operation stats and grouped errors: a delta or a cumulative total."""

    ops: dict[str, OpStats] = field(default_factory=dict)
    errors: dict[ErrorKey, int] = field(default_factory=dict)
    _distinct: dict[str, int] = field(default_factory=dict, repr=False)

    def op(self, name: str) -> OpStats:
        st = self.ops.get(name)
        if st is None:
            st = self.ops[name] = OpStats(name)
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
        for key, count in other.errors.items():
            self.add_error(key, count)

    def reset(self) -> None:
        for st in self.ops.values():
            st.reset()
        self.errors.clear()
        self._distinct.clear()

    def combined(self) -> OpStats:
        """Every operation merged into one, for the headline figures."""
        out = OpStats("total")
        for st in self.ops.values():
            out.merge(st)
        return out

    @property
    def ok(self) -> int:
        return sum(st.ok for st in self.ops.values())

    @property
    def fail(self) -> int:
        return sum(st.fail for st in self.ops.values())

    def is_empty(self) -> bool:
        return not self.errors and all(st.ok == 0 and st.fail == 0 for st in self.ops.values())

    def to_wire(self) -> list[Any]:
        ops = [st.to_wire() for st in self.ops.values() if st.ok or st.fail]
        errors = [[n, t, m, c] for (n, t, m), c in self.errors.items()]
        return [ops, errors]

    @classmethod
    def from_wire(cls, obj: Any) -> Totals:
        if not isinstance(obj, list) or len(obj) != 2:
            raise StatsFormatError("totals: expected [operations, errors]")
        ops, errors = obj
        if not isinstance(ops, list) or not isinstance(errors, list):
            raise StatsFormatError("totals: operations and errors must be arrays")
        out = cls()
        for o in ops:
            st = OpStats.from_wire(o)
            if st.name in out.ops:
                raise StatsFormatError(f"totals: operation {st.name!r} listed twice")
            out.ops[st.name] = st
        for e in errors:
            if not (isinstance(e, list) and len(e) == 4 and all(isinstance(x, str) for x in e[:3])
                    and type(e[3]) is int and e[3] > 0):
                raise StatsFormatError(f"totals: bad error entry {str(e)[:80]}")
            out.add_error((e[0], e[1], e[2][:MAX_ERROR_TEXT]), e[3])
        return out

    def iter_errors(self) -> Iterator[tuple[ErrorKey, int]]:
        """Errors, most frequent first."""
        return iter(sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0])))


def merge_all(parts: Iterable[Totals]) -> Totals:
    out = Totals()
    for p in parts:
        out.merge(p)
    return out
