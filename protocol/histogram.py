"""The latency histogram: log-linear buckets, a sparse form and a dense form, packed arrays.

Theory of operation
-------------------
Latencies are integer nanoseconds. Values below 256 have a bucket each (exact); above
that, each power of two is split into 128 equal buckets, chosen by the value's top 8
bits::

    s = v.bit_length() - 8          # how many low bits the bucket ignores
    index = v            if s <= 0
    index = (s << 7) + (v >> s)     otherwise

so indexes are contiguous (0..255 are exact values, each later block of 128 covers one
power of two) and all fit in 16 bits (``MAX_INDEX`` is 7,295). A bucket spans ``2**s``
values starting at ``mantissa << s`` with ``mantissa >= 128``; reporting its integer
midpoint is off by at most ``2**(s-1) / (128 * 2**s) = 1/256``, a relative error under
0.4%, for every value. The layout is a protocol constant (``HISTOGRAM_LAYOUT``):
merging two histograms is adding their counts, in any order.

Two forms, one meaning:

- ``Histogram`` is sparse. A worker records into its ``counts`` dict, or, in the call
  loops, inline into a dense tally (``rows``: two list subscripts a call, no bucket
  arithmetic) whose counts move into the dict whenever it is read; a histogram read
  off the wire holds the packed arrays it came in and builds the dict only if asked.
- ``DenseHistogram`` is what the master accumulates into: a numpy array over the range
  of buckets seen so far (it grows), so a merge is one vector operation,
  ``np.add.at(counts, index - low, count)``.

On the wire a histogram is two byte strings: bucket indexes as little-endian uint16
and their counts as little-endian uint16 when every one fits (nearly always: a
worker's second of one name), else uint32, else uint64 (the width is the length of
one over the other's). Indexes increase strictly: each bucket
appears once, and the first and last index are the histogram's range, so a merge
into a range-grown dense histogram reads its bounds without a pass over the array.
``unpack`` checks every rule: lengths, the order, the index range and counts of at
most ``MAX_COUNT`` each, so that no sum of them (at most one per bucket) overflows 64
bits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "HISTOGRAM_LAYOUT",
    "MAX_INDEX",
    "MAX_VALUE_NS",
    "RELATIVE_ERROR",
    "SUB_BUCKET_BITS",
    "Counts",
    "DenseHistogram",
    "Histogram",
    "HistogramArena",
    "HistogramFormatError",
    "Indexes",
    "Unpacked",
    "bucket_bounds",
    "bucket_index",
    "bucket_value",
    "summed",
    "unpack",
    "unpack_many",
]

HISTOGRAM_LAYOUT = 1
SUB_BUCKET_BITS = 7
# A bucket's midpoint is within this fraction of any value it holds.
RELATIVE_ERROR = 1 / 256
MAX_VALUE_NS = (1 << 63) - 1
MAX_INDEX = ((MAX_VALUE_NS.bit_length() - 8) << SUB_BUCKET_BITS) + 255
# a count a peer may send for one bucket: far above any real run (2.8e14 calls), and low
# enough that the sum of every bucket cannot overflow 64 bits
MAX_COUNT = 1 << 48
_GROW_SLACK = 64  # buckets added at least on each side when a dense histogram grows
# The worker's tally (``Histogram.rows``): row s for the values whose top 8 bits start at
# bit s (s = v.bit_length() - 8; row 0 every v below 256), indexed by v >> s.
_ROWS = MAX_VALUE_NS.bit_length() - SUB_BUCKET_BITS  # 56: s from 0 to 55
_ROW = 1 << (SUB_BUCKET_BITS + 1)  # v >> s < 256
_ZERO_ROW = [0] * _ROW

# Indexes as they come (uint16 off the wire, intp from a dense histogram): np.add.at takes
# either at the same speed. Counts as uint64 where they are merged: np.add.at is many times
# slower when the counts' type differs from the target's; the narrowest where kept long.
Indexes = npt.NDArray[np.integer[Any]]
Counts = npt.NDArray[np.unsignedinteger[Any]]
_INDEX = np.dtype("<u2")
_COUNT16 = np.dtype("<u2")
_COUNT32 = np.dtype("<u4")
_COUNT64 = np.dtype("<u8")


class HistogramFormatError(ValueError):
    """A packed histogram from a peer breaks a rule; the message says which."""


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


def _narrowest(counts: Counts) -> Counts:
    """``counts`` as little-endian uint16 when every one fits, else uint32, else uint64."""
    top = int(counts.max()) if counts.size else 0
    return counts.astype(_COUNT16 if top <= 0xFFFF else _COUNT32 if top <= 0xFFFFFFFF
                         else _COUNT64)


def _with_slack(low: int, high: int) -> tuple[int, int]:
    """The range to hold buckets ``low .. high - 1`` when a histogram grows: room on each
    side for a quarter of its width more (at least _GROW_SLACK), so that one whose
    latencies drift or spread grows seldom."""
    slack = max(_GROW_SLACK, (high - low) // 4)
    return max(0, low - slack), min(MAX_INDEX + 1, high + slack)


def _nearest_rank(q: float, total: int) -> int:
    return max(1, math.ceil(q * total - 1e-9))  # the epsilon absorbs float drift (0.9*10)


def unpack(indexes: Any, counts: Any) -> tuple[Indexes, Counts]:
    """The arrays of a packed histogram, every rule checked (HistogramFormatError)."""
    if not isinstance(indexes, bytes) or not isinstance(counts, bytes):
        raise HistogramFormatError("histogram: indexes and counts must be byte strings")
    if len(indexes) % 2:
        raise HistogramFormatError("histogram: indexes are not whole uint16 values")
    n = len(indexes) // 2
    if n > MAX_INDEX + 1:  # so that no sum of counts (each at most MAX_COUNT) overflows
        raise HistogramFormatError(f"histogram: {n} entries, more than there are buckets")
    if len(counts) == 2 * n:
        cnt = np.frombuffer(counts, _COUNT16).astype(np.uint64)  # add.at wants one type
    elif len(counts) == 4 * n:
        cnt = np.frombuffer(counts, _COUNT32).astype(np.uint64)
    elif len(counts) == 8 * n:
        cnt = np.frombuffer(counts, _COUNT64)
        if n and int(cnt.max()) > MAX_COUNT:
            raise HistogramFormatError("histogram: a count out of range")
    else:
        raise HistogramFormatError(f"histogram: {n} indexes but {len(counts)} bytes of counts")
    idx = np.frombuffer(indexes, _INDEX)
    if n > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise HistogramFormatError("histogram: bucket indexes do not increase strictly")
    if n and int(idx[-1]) > MAX_INDEX:
        raise HistogramFormatError(f"histogram: bucket index {int(idx[-1])} out of range")
    return idx, cnt


@dataclass(slots=True)
class Unpacked:
    """Many packed histograms, checked and unpacked into one pair of arrays.

    Histogram ``j`` is ``indexes[starts[j]:starts[j + 1]]`` with its counts, of
    ``totals[j]`` calls, its buckets from ``lows[j]`` to ``highs[j] - 1`` (0 and 0 when
    empty); one that broke a rule is empty, with the reason in ``errors[j]``."""

    indexes: Indexes  # uint16
    counts: Counts  # uint64
    starts: list[int]
    totals: list[int]
    lows: list[int]
    highs: list[int]
    errors: dict[int, str]

    def span(self, j: int) -> tuple[Indexes, Counts]:
        a, b = self.starts[j], self.starts[j + 1]
        return self.indexes[a:b], self.counts[a:b]


def unpack_many(pairs: Sequence[tuple[Any, Any]]) -> Unpacked:
    """``unpack`` for many histograms at once: a few vector operations over their
    concatenation instead of several for each (the master takes thousands a second).

    When every histogram has 16-bit counts (the common case), or every one 32-bit, the
    rules are checked on the concatenation; if any fails, or the widths differ, each is
    checked on its own by ``unpack`` to find which and why."""
    n = len(pairs)
    raw_indexes = [i for i, _ in pairs]
    raw_counts = [c for _, c in pairs]
    if n and set(map(type, raw_indexes)) | set(map(type, raw_counts)) != {bytes}:
        return _unpack_each(pairs)
    sizes = np.fromiter(map(len, raw_indexes), np.intp, n)
    width: np.dtype[Any] = _COUNT16
    if n:
        counts_sizes = np.fromiter(map(len, raw_counts), np.intp, n)
        if bool((counts_sizes != sizes).any()):
            width = _COUNT32
            if bool((counts_sizes != 2 * sizes).any()):
                return _unpack_each(pairs)
        if bool((sizes & 1).any()) or int(sizes.max()) > 2 * (MAX_INDEX + 1):
            return _unpack_each(pairs)
    lengths = sizes >> 1
    ends = np.cumsum(lengths)
    idx = np.frombuffer(b"".join(raw_indexes), _INDEX)
    cnt = np.frombuffer(b"".join(raw_counts), width).astype(np.uint64)
    # each count < 2**32, at most MAX_INDEX + 1 a histogram: no sum overflows
    out = Unpacked(idx, cnt, [0, *ends.tolist()], [0] * n, [0] * n, [0] * n, {})
    if idx.size:
        full = np.flatnonzero(lengths)
        firsts = ends[full] - lengths[full]
        # the order may break only where a histogram starts; each one's last index is
        # its largest
        breaks = idx[1:] <= idx[:-1]
        breaks[firsts[1:] - 1] = False
        full_ends = ends[full]
        if bool(breaks.any()) or int(idx[full_ends - 1].max()) > MAX_INDEX:
            return _unpack_each(pairs)
        _spans(out, full, firsts, full_ends)
    return out


def _spans(out: Unpacked, full: Indexes, firsts: Indexes, ends: Indexes) -> None:
    """Fill in the totals and bucket ranges of the non-empty histograms ``full``, which
    start at ``firsts`` and end before ``ends`` in ``out``'s arrays."""
    if not full.size:
        return
    n = len(out.totals)
    totals = np.zeros(n, np.uint64)
    totals[full] = np.add.reduceat(out.counts, firsts)
    lows = np.zeros(n, np.intp)
    lows[full] = out.indexes[firsts]
    highs = np.zeros(n, np.intp)
    highs[full] = out.indexes[ends - 1].astype(np.intp) + 1
    out.totals, out.lows, out.highs = totals.tolist(), lows.tolist(), highs.tolist()


def summed(indexes: Indexes, counts: Counts) -> Counts:
    """Entries of any number of histograms summed over every bucket: what a ``full``
    histogram adds with ``add_full``, for one vector add into each of several."""
    out = np.zeros(MAX_INDEX + 1, np.uint64)
    np.add.at(out, indexes, counts)
    return out


def _unpack_each(pairs: Sequence[tuple[Any, Any]]) -> Unpacked:
    parts: list[tuple[Indexes, Counts]] = []
    errors: dict[int, str] = {}
    for j, (indexes, counts) in enumerate(pairs):
        try:
            parts.append(unpack(indexes, counts))
        except HistogramFormatError as e:
            errors[j] = str(e)
            parts.append((np.zeros(0, _INDEX), np.zeros(0, np.uint64)))
    starts = [0, *itertools.accumulate(len(i) for i, _ in parts)]
    n = len(pairs)
    out = Unpacked(np.concatenate([i for i, _ in parts]) if parts else np.zeros(0, _INDEX),
                   np.concatenate([c for _, c in parts]) if parts else np.zeros(0, np.uint64),
                   starts, [0] * n, [0] * n, [0] * n, errors)
    full = np.flatnonzero(np.fromiter((len(i) for i, _ in parts), np.intp, n))
    bounds = np.array(starts, np.intp)
    _spans(out, full, bounds[full], bounds[full + 1])
    return out


class Histogram:
    """A sparse histogram: counts per bucket index; see the module docstring."""

    __slots__ = ("_counts", "_packed", "_rows")

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self._counts: dict[int, int] | None = counts if counts is not None else {}
        self._packed: tuple[Indexes, Counts] | None = None
        self._rows: list[list[int]] | None = None

    @classmethod
    def from_arrays(cls, indexes: Indexes, counts: Counts) -> Histogram:
        """A histogram holding checked arrays (``unpack``'s)."""
        h = cls()
        h._counts, h._packed = None, (indexes, counts)
        return h

    @property
    def counts(self) -> dict[int, int]:
        """Bucket index -> count. Writing to it is recording."""
        if self._counts is None:
            counts: dict[int, int] = {}
            for i, c in self.items():
                counts[i] = c
            self._counts, self._packed = counts, None
        if self._rows is not None:
            self._fold()
        return self._counts

    def rows(self) -> list[list[int]]:
        """A dense tally for a hot loop to record into (the worker's call loops), made on
        first use: ``s = v.bit_length() - 8``, then ``rows[s][v >> s] += 1`` if s > 0,
        else ``rows[0][v] += 1``. No bucket arithmetic and no dict look-up a call: the
        row and the value's top 8 bits are the bucket, ``(s << 7) + (v >> s)``. Its
        counts move into ``counts`` whenever the histogram is read; ``clear`` zeroes it
        in place (the loop keeps it). 56 rows of 256: 115 KiB a histogram."""
        if self._rows is None:
            self.counts  # noqa: B018 (in the dict form from now on)
            self._rows = [[0] * _ROW for _ in range(_ROWS)]
        return self._rows

    def _fold(self) -> None:
        """Move the tally's counts into the dict."""
        assert self._rows is not None and self._counts is not None
        counts = self._counts
        for s, row in enumerate(self._rows):
            if any(row):
                base = s << SUB_BUCKET_BITS  # (row 0: the value itself)
                for m, c in enumerate(row):
                    if c:
                        i = base + m
                        counts[i] = counts.get(i, 0) + c
                row[:] = _ZERO_ROW

    def record(self, value_ns: int, count: int = 1) -> None:
        # (beside a tally, into the dict: both are read together)
        counts = self._counts if self._counts is not None else self.counts
        if 0 < value_ns <= MAX_VALUE_NS:  # bucket_index, inlined
            s = value_ns.bit_length() - 8
            i = value_ns if s <= 0 else (s << SUB_BUCKET_BITS) + (value_ns >> s)
        else:
            i = bucket_index(value_ns)
        counts[i] = counts.get(i, 0) + count

    def empty_like(self) -> Histogram:
        return Histogram()

    def merge(self, other: Histogram | DenseHistogram) -> None:
        counts = self.counts
        for i, c in other.items():
            counts[i] = counts.get(i, 0) + c

    def items(self) -> list[tuple[int, int]]:
        """(index, count) pairs in index order."""
        if self._counts is None:
            assert self._packed is not None
            idx, cnt = self._packed  # increasing, as unpack checked
            return [(i, c) for i, c in zip(idx.tolist(), cnt.tolist(), strict=True) if c]
        return sorted(self.counts.items())

    def packed(self) -> tuple[Indexes, Counts]:
        """Indexes and counts as arrays (from a dict: each index once, in order)."""
        if self._counts is None:
            assert self._packed is not None
            return self._packed
        counts = self.counts
        keys = sorted(counts)
        return (np.array(keys, dtype=np.intp),
                np.array([counts[k] for k in keys], dtype=np.uint64))

    def clear(self) -> None:
        """Zero in place: the worker's call loops hold references to ``counts`` and
        ``rows``."""
        if self._rows is not None:
            for row in self._rows:
                if any(row):
                    row[:] = _ZERO_ROW
        if self._counts is None:
            self._counts, self._packed = {}, None
        else:
            self._counts.clear()

    @property
    def total(self) -> int:
        if self._counts is None:
            assert self._packed is not None
            return int(self._packed[1].sum())
        return sum(self.counts.values())

    def percentile(self, q: float) -> int | None:
        """The nearest-rank ``q`` quantile (0 < q <= 1) as a bucket midpoint, in ns."""
        total = self.total
        if total == 0:
            return None
        rank = _nearest_rank(q, total)
        seen = 0
        for i, c in self.items():
            seen += c
            if seen >= rank:
                return bucket_value(i)
        raise AssertionError("unreachable: the ranks add up to the total")

    def to_wire(self) -> tuple[bytes, bytes]:
        """The packed form: uint16 indexes, counts in the narrowest of uint16, 32, 64."""
        idx, cnt = self.packed()
        return idx.astype(_INDEX).tobytes(), _narrowest(cnt).tobytes()

    @classmethod
    def from_wire(cls, indexes: Any, counts: Any) -> Histogram:
        return cls.from_arrays(*unpack(indexes, counts))


class DenseHistogram:
    """Counts over a contiguous range of buckets, grown as needed: merges are vector adds.

    ``full``: over every bucket from the start (58 KiB), so a merge needs no offset: for
    the few histograms that take every delta (the run's totals, the open seconds)."""

    __slots__ = ("_counts", "_full", "_low")

    def __init__(self, full: bool = False) -> None:
        self._low = 0
        self._full = full
        self._counts: Counts = np.zeros(MAX_INDEX + 1 if full else 0, np.uint64)

    def add(self, indexes: Indexes, counts: Counts) -> None:
        """Add checked arrays (indexes in range and increasing strictly, as ``unpack``
        and ``packed`` guarantee)."""
        if counts.dtype != np.uint64:  # a histogram kept compact (see ``sparse``)
            counts = counts.astype(np.uint64)
        if self._full:
            np.add.at(self._counts, indexes, counts)
            return
        if not indexes.size:
            return
        low, high = int(indexes[0]), int(indexes[-1]) + 1
        if low < self._low or high > self._low + self._counts.size or not self._counts.size:
            self._grow(low, high)
        np.add.at(self._counts, indexes - self._low, counts)

    def add_full(self, counts: Counts) -> None:
        """Add counts over every bucket (``summed``'s) to a ``full`` histogram."""
        assert self._full
        self._counts += counts

    def _grow(self, low: int, high: int) -> None:
        if self._counts.size:
            low, high = min(low, self._low), max(high, self._low + self._counts.size)
        low, high = _with_slack(low, high)
        grown = np.zeros(high - low, np.uint64)
        if self._counts.size:
            start = self._low - low
            grown[start:start + self._counts.size] = self._counts
        self._low, self._counts = low, grown

    def empty_like(self) -> DenseHistogram:
        return DenseHistogram(self._full)

    def merge(self, other: Histogram | DenseHistogram) -> None:
        self.add(*other.packed())

    def record(self, value_ns: int, count: int = 1) -> None:
        self.add(np.array([bucket_index(value_ns)], np.intp),
                 np.array([count], np.uint64))

    def packed(self) -> tuple[Indexes, Counts]:
        nonzero = np.flatnonzero(self._counts)
        return nonzero + self._low, self._counts[nonzero]

    def items(self) -> list[tuple[int, int]]:
        idx, cnt = self.packed()
        return list(zip(idx.tolist(), cnt.tolist(), strict=True))

    def sparse(self) -> Histogram:
        """The same counts in the sparse form, in the smallest types (4 bytes a bucket
        when every count fits 16 bits, 6 when 32): for histograms kept long and seldom
        read."""
        idx, cnt = self.packed()
        return Histogram.from_arrays(idx.astype(_INDEX), _narrowest(cnt))

    @property
    def counts(self) -> dict[int, int]:
        return dict(self.items())

    def clear(self) -> None:
        self._counts[:] = 0

    @property
    def total(self) -> int:
        return int(self._counts.sum())

    def percentile(self, q: float) -> int | None:
        """The nearest-rank ``q`` quantile (0 < q <= 1) as a bucket midpoint, in ns."""
        total = self.total
        if total == 0:
            return None
        ranks = np.cumsum(self._counts)
        i = int(np.searchsorted(ranks, _nearest_rank(q, total)))
        return bucket_value(self._low + i)

    def to_wire(self) -> tuple[bytes, bytes]:
        return self.sparse().to_wire()


class HistogramArena:
    """Many range-grown dense histograms side by side in one array, so that adding a
    batch of deltas to many of them is a single vector add (the master's per-worker
    totals: thousands of histograms, each taking one delta a second).

    A histogram is a slot number. Its buckets ``low .. low + size - 1`` lie at
    ``start .. start + size - 1`` of the array; one that must grow moves to the end,
    and the space it left is reclaimed when the array is next full (compaction)."""

    __slots__ = ("_data", "_end", "_live", "_low", "_size", "_start", "moves")

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._data: Counts = np.zeros(capacity, np.uint64)
        self._end = 0  # the first position no slot has used
        self._live = 0  # positions held by slots now
        self._low: list[int] = []
        self._start: list[int] = []
        self._size: list[int] = []
        self.moves = 0  # every offset taken before a move may be stale: take them again

    def new(self) -> int:
        """A new, empty histogram's slot."""
        self._low.append(0)
        self._start.append(0)
        self._size.append(0)
        return len(self._low) - 1

    def offset(self, slot: int, low: int, high: int) -> int:
        """Make ``slot`` cover buckets ``low .. high - 1``; what to add to one of its
        bucket indexes to get its position in the array (for ``add``)."""
        have = self._low[slot]
        if low < have or high > have + self._size[slot] or not self._size[slot]:
            self._move(slot, low, high)
        return self._start[slot] - self._low[slot]

    def add(self, positions: Indexes, counts: Counts) -> None:
        """Add counts at positions (bucket indexes plus their slot's ``offset``)."""
        np.add.at(self._data, positions, counts)

    def packed(self, slot: int) -> tuple[Indexes, Counts]:
        """The slot's non-zero buckets, as ``DenseHistogram.packed``."""
        start = self._start[slot]
        counts = self._data[start:start + self._size[slot]]
        nonzero = np.flatnonzero(counts)
        return nonzero + self._low[slot], counts[nonzero]

    @property
    def capacity(self) -> int:
        return int(self._data.size)

    def _move(self, slot: int, low: int, high: int) -> None:
        self.moves += 1
        size = self._size[slot]
        if size:
            low, high = min(low, self._low[slot]), max(high, self._low[slot] + size)
        low, high = _with_slack(low, high)
        grown = high - low
        if self._end + grown > self._data.size:
            self._compact(grown)
        start, new_start = self._start[slot], self._end
        if size:
            at = new_start + self._low[slot] - low
            self._data[at:at + size] = self._data[start:start + size]
        self._low[slot], self._start[slot], self._size[slot] = low, new_start, grown
        self._end += grown
        self._live += grown - size

    def _compact(self, need: int) -> None:
        """Move every slot to the front of an array with room for ``need`` more and as
        much again as is live (so that growing costs amortized constant time)."""
        data = np.zeros(max(self._data.size, 2 * (self._live + need)), np.uint64)
        end = 0
        for slot, size in enumerate(self._size):
            if size:
                start = self._start[slot]
                data[end:end + size] = self._data[start:start + size]
                self._start[slot] = end
                end += size
        self._data, self._end = data, end
