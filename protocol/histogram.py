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

- ``Histogram`` is sparse. A worker records into its ``counts`` dict (the call loop
  does so inline); a histogram read off the wire holds the packed arrays it came in
  and builds the dict only if asked.
- ``DenseHistogram`` is what the master accumulates into: a numpy array over the range
  of buckets seen so far (it grows), so a merge is one vector operation,
  ``np.add.at(counts, index - low, count)``.

On the wire a histogram is two byte strings: bucket indexes as little-endian uint16
and their counts as little-endian uint32, or uint64 when one does not fit (the width
is the length of one over the other's). Senders write each index once, in increasing
order; a receiver adds counts per index (``np.add.at``), so order and repeats cannot
make it wrong, and ``unpack`` checks only what could: lengths, the index range, at
most one entry per bucket's worth (``MAX_INDEX + 1``) and counts of at most
``MAX_COUNT`` each, so that no sum of them overflows 64 bits.
"""

from __future__ import annotations

import math
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
    "HistogramFormatError",
    "Indexes",
    "bucket_bounds",
    "bucket_index",
    "bucket_value",
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
_GROW_SLACK = 64  # buckets added on each side when a dense histogram grows

# intp indexes and uint64 counts where they are merged (numpy indexes with intp without a
# conversion, and np.add.at is slow with mixed types); uint16 and uint32 where kept long
Indexes = npt.NDArray[np.integer[Any]]
Counts = npt.NDArray[np.unsignedinteger[Any]]
_INDEX = np.dtype("<u2")
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
    """``counts`` as little-endian uint32 when every one fits, else uint64."""
    wide = bool(counts.size) and int(counts.max()) > 0xFFFFFFFF
    return counts.astype(_COUNT64 if wide else _COUNT32)


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
    if len(counts) == 4 * n:
        cnt = np.frombuffer(counts, _COUNT32).astype(np.uint64)  # add.at wants one type
    elif len(counts) == 8 * n:
        cnt = np.frombuffer(counts, _COUNT64)
        if n and int(cnt.max()) > MAX_COUNT:
            raise HistogramFormatError("histogram: a count out of range")
    else:
        raise HistogramFormatError(f"histogram: {n} indexes but {len(counts)} bytes of counts")
    idx = np.frombuffer(indexes, _INDEX)
    if n and int(idx.max()) > MAX_INDEX:
        raise HistogramFormatError(f"histogram: bucket index {int(idx.max())} out of range")
    return idx.astype(np.intp), cnt


class Histogram:
    """A sparse histogram: counts per bucket index; see the module docstring."""

    __slots__ = ("_counts", "_packed")

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self._counts: dict[int, int] | None = counts if counts is not None else {}
        self._packed: tuple[Indexes, Counts] | None = None

    @classmethod
    def from_arrays(cls, indexes: Indexes, counts: Counts) -> Histogram:
        """A histogram holding checked arrays (``unpack``'s)."""
        h = cls()
        h._counts, h._packed = None, (indexes, counts)
        return h

    @property
    def counts(self) -> dict[int, int]:
        """Bucket index -> count. Writing to it is recording (the worker's call loop)."""
        if self._counts is None:
            counts: dict[int, int] = {}
            for i, c in self.items():
                counts[i] = c
            self._counts, self._packed = counts, None
        return self._counts

    def record(self, value_ns: int, count: int = 1) -> None:
        counts = self.counts
        i = bucket_index(value_ns)
        counts[i] = counts.get(i, 0) + count

    def merge(self, other: Histogram | DenseHistogram) -> None:
        counts = self.counts
        for i, c in other.items():
            counts[i] = counts.get(i, 0) + c

    def items(self) -> list[tuple[int, int]]:
        """(index, count) pairs in index order."""
        if self._counts is None:
            assert self._packed is not None
            summed: dict[int, int] = {}  # a peer's indexes may repeat, in any order
            for i, c in zip(self._packed[0].tolist(), self._packed[1].tolist(), strict=True):
                if c:
                    summed[i] = summed.get(i, 0) + c
            return sorted(summed.items())
        return sorted(self._counts.items())

    def packed(self) -> tuple[Indexes, Counts]:
        """Indexes and counts as arrays (from a dict: each index once, in order)."""
        if self._counts is None:
            assert self._packed is not None
            return self._packed
        keys = sorted(self._counts)
        return (np.array(keys, dtype=np.intp),
                np.array([self._counts[k] for k in keys], dtype=np.uint64))

    def clear(self) -> None:
        """Zero in place: the worker's call loop holds a reference to ``counts``."""
        self.counts.clear()

    @property
    def total(self) -> int:
        if self._counts is None:
            assert self._packed is not None
            return int(self._packed[1].sum())
        return sum(self._counts.values())

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
        """The packed form: uint16 indexes, uint32 counts (uint64 when one is larger)."""
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
        """Add checked arrays (indexes in range, as ``unpack`` guarantees)."""
        if indexes.dtype != np.intp:  # a histogram kept compact (see ``sparse``)
            indexes = indexes.astype(np.intp)
        if counts.dtype != np.uint64:
            counts = counts.astype(np.uint64)
        if self._full:
            np.add.at(self._counts, indexes, counts)
            return
        if not indexes.size:
            return
        low, high = int(indexes.min()), int(indexes.max()) + 1
        if low < self._low or high > self._low + self._counts.size or not self._counts.size:
            self._grow(low, high)
        np.add.at(self._counts, indexes - self._low, counts)

    def _grow(self, low: int, high: int) -> None:
        if self._counts.size:
            low, high = min(low, self._low), max(high, self._low + self._counts.size)
        low, high = max(0, low - _GROW_SLACK), min(MAX_INDEX + 1, high + _GROW_SLACK)
        grown = np.zeros(high - low, np.uint64)
        if self._counts.size:
            start = self._low - low
            grown[start:start + self._counts.size] = self._counts
        self._low, self._counts = low, grown

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
        """The same counts in the sparse form, in the smallest types (6 bytes a bucket
        when every count fits 32 bits): for histograms kept long and seldom read."""
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
