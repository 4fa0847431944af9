"""Tests for protocol.stats: the log-linear histogram, per-operation totals, errors, wire form."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.calls import MAX_STATUS_CODES
from protocol.histogram import (
    MAX_COUNT,
    MAX_INDEX,
    MAX_VALUE_NS,
    RELATIVE_ERROR,
    DenseHistogram,
    Histogram,
    HistogramFormatError,
    bucket_bounds,
    bucket_index,
    bucket_value,
)
from protocol.stats import (
    MAX_ERROR_TEXT,
    MAX_ERRORS_PER_NAME,
    OTHER_ERRORS,
    OpStats,
    StatsFormatError,
    Totals,
    error_key,
    merge_all,
)
from tests.wire_helpers import u16, u32, u64

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=300)
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999, 1.0)


def assert_within_error(value: int) -> None:
    i = bucket_index(value)
    low, high = bucket_bounds(i)
    assert low <= value <= high, (value, i, low, high)
    reported = bucket_value(i)
    assert low <= reported <= high
    # RELATIVE_ERROR is 1/256: compare in integers so float rounding cannot hide a miss
    assert RELATIVE_ERROR == 1 / 256
    assert abs(reported - value) * 256 <= value, (value, reported)
    assert abs(reported - value) <= value * RELATIVE_ERROR
    if value < 256:
        assert reported == value


def interesting_values() -> list[int]:
    values = list(range(2001))
    for b in range(1, 41):  # 2**40 > 10**12
        p = 1 << b
        values += [p - 2, p - 1, p, p + 1, p + 2]
    rng = random.Random(1234)
    values += [rng.randrange(10**12 + 1) for _ in range(5000)]
    values += [10**k for k in range(13)]
    return [v for v in values if 0 <= v <= 10**12]


# -- buckets -------------------------------------------------------------------------------


def test_relative_error_bound_over_a_wide_range() -> None:
    for v in interesting_values():
        assert_within_error(v)


@FAST
@given(st.integers(min_value=0, max_value=10**12))
def test_relative_error_bound_random(value: int) -> None:
    assert_within_error(value)


@FAST
@given(st.integers(min_value=0, max_value=MAX_VALUE_NS))
def test_relative_error_bound_up_to_the_largest_value(value: int) -> None:
    assert_within_error(value)


def test_values_below_256_are_exact_buckets() -> None:
    for v in range(256):
        assert bucket_index(v) == v
        assert bucket_bounds(v) == (v, v)
        assert bucket_value(v) == v


def test_indexes_are_contiguous_and_cover_every_value() -> None:
    assert bucket_bounds(0) == (0, 0)
    previous_high = -1
    for i in range(MAX_INDEX + 1):
        low, high = bucket_bounds(i)
        assert low == previous_high + 1, i
        assert low <= high
        assert bucket_index(low) == i
        assert bucket_index(high) == i
        previous_high = high
    assert previous_high == MAX_VALUE_NS
    assert bucket_index(MAX_VALUE_NS) == MAX_INDEX


@FAST
@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10**12))
def test_bucket_index_is_monotonic(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    assert bucket_index(lo) <= bucket_index(hi)
    assert bucket_index(hi) <= bucket_index(hi + 1)


def test_out_of_range_values_are_clamped() -> None:
    assert bucket_index(-5) == 0
    assert bucket_index(MAX_VALUE_NS + 10**6) == MAX_INDEX


# -- merge ---------------------------------------------------------------------------------


def split3(items: list[Any], rng: random.Random) -> list[list[Any]]:
    parts: list[list[Any]] = [[], [], []]
    for x in items:
        parts[rng.randrange(3)].append(x)
    return parts


def sample(rng: random.Random, n: int) -> list[int]:
    return [int(rng.lognormvariate(15, 2)) for _ in range(n)] + [0, 1, 255, 256, 10**12]


def tally(h: Histogram, value: int) -> None:
    """Record ``value`` as the worker's call loops do (``Histogram.rows``, inlined)."""
    rows = h.rows()
    s = value.bit_length() - 8
    if s > 0:
        rows[s][value >> s] += 1
    else:
        rows[0][value] += 1


def test_the_tally_counts_each_value_in_its_bucket() -> None:
    values = [*interesting_values(), MAX_VALUE_NS - 1, MAX_VALUE_NS]
    tallied, recorded = Histogram(), Histogram()
    for v in values:
        tally(tallied, v)
        recorded.record(v)
    assert tallied.counts == recorded.counts
    assert tallied.total == len(values)


def test_the_tally_is_read_with_the_dict_and_zeroed_in_place() -> None:
    h = Histogram()
    rows = h.rows()
    tally(h, 1000)
    h.record(1000)  # beside the tally: both are read
    tally(h, 5)
    assert h.total == 3
    assert h.items() == [(5, 1), (bucket_index(1000), 2)]
    tally(h, 1000)  # after a read, into the same rows: the call loop keeps them
    assert h.rows() is rows
    assert h.counts == {5: 1, bucket_index(1000): 3}
    merged = Histogram()
    tally(h, 2**40)
    merged.merge(h)
    assert merged.counts == {5: 1, bucket_index(1000): 3, bucket_index(2**40): 1}
    h.clear()
    assert h.rows() is rows and not any(map(any, rows))
    assert h.total == 0 and h.counts == {}
    tally(h, 7)
    assert h.to_wire() == Histogram({7: 1}).to_wire()


@pytest.mark.parametrize("seed", range(5))
def test_histogram_merge_equals_recording_into_one(seed: int) -> None:
    rng = random.Random(seed)
    values = sample(rng, 3000)
    whole = Histogram()
    for v in values:
        whole.record(v)
    parts = []
    for chunk in split3(values, rng):
        h = Histogram()
        for v in chunk:
            h.record(v)
        parts.append(h)
    merged = Histogram()
    for h in parts:
        merged.merge(h)
    assert merged.counts == whole.counts
    assert merged.total == len(values)
    # merge order does not matter
    other = Histogram()
    for h in reversed(parts):
        other.merge(h)
    assert other.counts == whole.counts


def record_ops(totals: Totals, events: list[tuple[str, bool, int, str]]) -> None:
    for name, ok, ns, err in events:
        st = totals.op(name)
        if ok:
            st.record_ok(ns)
        else:
            st.fail += 1
            totals.add_error(error_key(name, ValueError(err)))


def snapshot(t: Totals) -> dict[str, Any]:
    return {
        "ops": {
            name: (s.ok, s.fail, s.sum_ns, s.min_value, s.max_ns, dict(s.hist.counts))
            for name, s in t.ops.items() if s.ok or s.fail
        },
        "errors": dict(t.errors),
    }


@pytest.mark.parametrize("seed", range(5))
def test_totals_merge_equals_recording_into_one(seed: int) -> None:
    rng = random.Random(seed)
    names = ["GET /", "POST /x", "Client"]
    events = [
        (rng.choice(names), rng.random() < 0.8, int(rng.lognormvariate(14, 2)),
         f"boom {rng.randrange(20)}")
        for _ in range(3000)
    ]
    whole = Totals()
    record_ops(whole, events)
    parts = []
    for chunk in split3(events, rng):
        t = Totals()
        record_ops(t, chunk)
        parts.append(t)
    merged = Totals()
    for t in parts:
        merged.merge(t)
    assert snapshot(merged) == snapshot(whole)
    assert snapshot(merge_all(parts)) == snapshot(whole)
    assert merged.ok == whole.ok and merged.fail == whole.fail
    assert merged.ok + merged.fail == len(events)
    c, w = merged.combined(), whole.combined()
    assert (c.ok, c.fail, c.sum_ns, c.min_ns, c.max_ns) == (w.ok, w.fail, w.sum_ns, w.min_ns,
                                                           w.max_ns)
    assert c.hist.counts == w.hist.counts


def test_opstats_merge_with_an_empty_one_keeps_min_and_max() -> None:
    a = OpStats("x")
    for v in (500, 7, 9000):
        a.record_ok(v)
    a.merge(OpStats("x"))
    assert (a.ok, a.min_value, a.max_ns, a.sum_ns) == (3, 7, 9000, 9507)
    empty = OpStats("x")
    empty.merge(a)
    assert (empty.ok, empty.min_value, empty.max_ns, empty.sum_ns) == (3, 7, 9000, 9507)
    assert empty.mean_ns == pytest.approx(9507 / 3)
    assert OpStats("y").min_value is None and OpStats("y").mean_ns is None


def test_reset_zeroes_in_place() -> None:
    t = Totals()
    record_ops(t, [("a", True, 10, ""), ("a", False, 0, "bad")])
    counts = t.ops["a"].hist.counts
    t.reset()
    assert t.is_empty()
    assert t.ops["a"].hist.counts is counts and not counts
    assert t.ops["a"].min_value is None
    assert t.errors == {}


# -- percentiles ---------------------------------------------------------------------------


def exact_percentile(sorted_values: list[int], q: float) -> int:
    rank = max(1, math.ceil(Fraction(str(q)) * len(sorted_values)))
    return sorted_values[rank - 1]


def distributions() -> dict[str, list[int]]:
    rng = random.Random(99)
    return {
        "uniform": [rng.randrange(10**3, 10**9) for _ in range(5000)],
        "lognormal": [int(rng.lognormvariate(16, 1.5)) for _ in range(5000)],
        "exponential": [int(rng.expovariate(1 / 2e6)) for _ in range(5000)],
        "bimodal": [rng.choice((rng.randrange(1000, 2000), rng.randrange(10**8, 2 * 10**8)))
                    for _ in range(5000)],
        "small exact": [rng.randrange(0, 256) for _ in range(1000)],
        "constant": [123_456_789] * 100,
        "ten": [(k + 1) * 1_000_000 for k in range(10)],
        "one": [42_424_242],
        "heavy tail": [1_000_000] * 990 + [10**12] * 10,
    }


@pytest.mark.parametrize("name", list(distributions()))
def test_percentiles_match_exact_data_within_the_error_bound(name: str) -> None:
    values = distributions()[name]
    h = Histogram()
    op = OpStats("x")
    for v in values:
        h.record(v)
        op.record_ok(v)
    ordered = sorted(values)
    for q in QUANTILES:
        exact = exact_percentile(ordered, q)
        got = h.percentile(q)
        assert got is not None
        assert abs(got - exact) <= exact * RELATIVE_ERROR, (name, q, exact, got)
        # nearest rank: the reported value is the midpoint of the exact value's bucket
        assert got == bucket_value(bucket_index(exact)), (name, q, exact, got)
        clamped = op.percentile(q)
        assert clamped is not None
        assert ordered[0] <= clamped <= ordered[-1]
        assert abs(clamped - exact) <= exact * RELATIVE_ERROR


@FAST
@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=300),
       st.sampled_from(QUANTILES))
def test_percentile_random_samples(values: list[int], q: float) -> None:
    h = Histogram()
    for v in values:
        h.record(v)
    exact = exact_percentile(sorted(values), q)
    got = h.percentile(q)
    assert got is not None
    assert abs(got - exact) <= exact * RELATIVE_ERROR


def test_opstats_percentile_is_clamped_to_exact_min_and_max() -> None:
    value = 1_000_000_001  # far from its bucket's midpoint
    assert bucket_value(bucket_index(value)) != value
    op = OpStats("x")
    for _ in range(10):
        op.record_ok(value)
    for q in (0.001, *QUANTILES):
        assert op.percentile(q) == value
    op.record_ok(value + 2)
    for q in (0.001, *QUANTILES):
        p = op.percentile(q)
        assert p is not None and value <= p <= value + 2


def test_empty_percentiles_are_none() -> None:
    assert Histogram().percentile(0.5) is None
    assert OpStats("x").percentile(0.99) is None


def test_percentile_counts_repeated_buckets() -> None:
    h = Histogram()
    h.record(10, count=9)
    h.record(1000)
    assert h.percentile(0.9) == 10
    assert h.percentile(0.91) == bucket_value(bucket_index(1000))
    assert h.total == 10


# -- errors --------------------------------------------------------------------------------


def test_error_cap_sends_the_rest_to_other() -> None:
    t = Totals()
    extra = 37
    total = 0
    for i in range(MAX_ERRORS_PER_NAME + extra):
        t.add_error(("GET", "ValueError", f"error {i}"), count=2)
        total += 2
    for i in range(5):  # already known ones still count under their own key
        t.add_error(("GET", "ValueError", f"error {i}"))
        total += 1
    t.add_error(("POST", "KeyError", "k"), count=3)  # another name has its own budget
    get = {k: c for k, c in t.errors.items() if k[0] == "GET"}
    others = [k for k in get if k[1] == OTHER_ERRORS]
    assert len(others) == 1
    assert len(get) == MAX_ERRORS_PER_NAME + 1
    assert get[others[0]] == 2 * extra
    assert sum(get.values()) == total
    assert get[("GET", "ValueError", "error 0")] == 3
    assert t.errors[("POST", "KeyError", "k")] == 3
    # the cap survives a merge and the wire; counts are preserved in total
    merged = Totals()
    merged.merge(t)
    merged.merge(t)
    assert sum(merged.errors.values()) == 2 * (total + 3)
    assert len([k for k in merged.errors if k[0] == "GET"]) == MAX_ERRORS_PER_NAME + 1
    back = Totals.from_wire(t.to_wire())
    assert back.errors == t.errors


def test_error_messages_are_cut() -> None:
    long = "x" * (MAX_ERROR_TEXT * 3)
    key = error_key("op", RuntimeError(long))
    assert key == ("op", "RuntimeError", "x" * MAX_ERROR_TEXT)
    # an exception with no text is named by its repr
    assert error_key("op", KeyError())[2] == repr(KeyError())
    # a peer's long message is cut too
    t = Totals.from_wire([[], [["op", "E", long, 4]]])
    assert t.errors == {("op", "E", "x" * MAX_ERROR_TEXT): 4}


def test_iter_errors_most_frequent_first() -> None:
    t = Totals()
    t.add_error(("a", "E", "rare"))
    t.add_error(("a", "E", "often"), count=5)
    t.add_error(("b", "E", "mid"), count=3)
    assert [c for _, c in t.iter_errors()] == [5, 3, 1]


# -- wire ----------------------------------------------------------------------------------


def full_totals() -> Totals:
    t = Totals()
    rng = random.Random(7)
    for name in ("GET /", "POST /api", "Ünïcode"):
        st = t.op(name)
        for _ in range(200):
            st.record_ok(int(rng.lognormvariate(15, 2)))
        st.fail = 4
        t.add_error((name, "TimeoutError", "timed out"), count=3)
        t.add_error((name, "ValueError", ""), count=1)
    t.op("fail only").fail = 2
    t.add_error(("fail only", "X", "y"), 2)
    t.op("nothing")  # empty: not sent
    return t





def test_histogram_wire_round_trip() -> None:
    h = Histogram()
    for v in interesting_values()[:3000]:
        h.record(v)
    indexes, counts = h.to_wire()
    assert isinstance(indexes, bytes) and len(counts) == len(indexes)  # uint16 both
    back = Histogram.from_wire(indexes, counts)
    assert back.counts == h.counts and back.total == h.total
    assert back.to_wire() == (indexes, counts)  # re-encoded as it came
    assert Histogram.from_wire(b"", b"").counts == {}


def test_a_count_over_16_bits_travels_as_uint32() -> None:
    h = Histogram({300: 1 << 16, 5: 1})
    indexes, counts = h.to_wire()
    assert len(counts) == 2 * len(indexes)
    assert Histogram.from_wire(indexes, counts).counts == {5: 1, 300: 1 << 16}


def test_a_count_over_32_bits_travels_as_uint64() -> None:
    h = Histogram({300: 1 << 33, 5: 1})
    indexes, counts = h.to_wire()
    assert len(counts) == 4 * len(indexes)
    assert Histogram.from_wire(indexes, counts).counts == {5: 1, 300: 1 << 33}


def test_dense_and_sparse_histograms_agree() -> None:
    rng = random.Random(3)
    sparse, dense = Histogram(), DenseHistogram()
    for _ in range(20):
        part = Histogram()
        for _ in range(rng.randint(0, 300)):
            part.record(int(rng.lognormvariate(rng.uniform(5, 30), 1.5)))
        sparse.merge(part)
        dense.merge(Histogram.from_wire(*part.to_wire()))  # as the master merges deltas
    assert dense.counts == sparse.counts and dense.total == sparse.total
    for q in QUANTILES:
        assert dense.percentile(q) == sparse.percentile(q)
    assert dense.sparse().counts == sparse.counts


BAD_HISTOGRAMS: dict[str, tuple[Any, Any]] = {
    "lengths differ": (u16([1, 2]), b"\x01\x00\x00"),
    "counts of odd bytes": (u16([1]), b"\x01"),
    "odd index bytes": (b"\x01", b""),
    "count over the limit": (u16([1]), u64([MAX_COUNT + 1])),
    "index too big": (u16([MAX_INDEX + 1]), u32([1])),
    "index too big among others": (u16([3, 4, 65535]), u32([1, 1, 1])),
    "indexes out of order": (u16([9, 3]), u32([1, 1])),
    "an index repeated": (u16([3, 9, 9]), u32([1, 1, 1])),
    # repeats could make a sum of counts of at most MAX_COUNT each overflow 64 bits
    "more entries than buckets": (u16([300] * (MAX_INDEX + 2)),
                                  u64([MAX_COUNT] * (MAX_INDEX + 2))),
    "lists, not bytes": ([1], [1]),
    "str": ("1", "1"),
    "none": (None, None),
}


def test_a_zero_count_adds_nothing() -> None:
    h = Histogram.from_wire(u16([3, 5, 9]), u32([2, 0, 5]))
    assert h.counts == {3: 2, 9: 5}
    assert h.total == 7 and h.percentile(0.5) == 9
    dense = DenseHistogram()
    dense.merge(h)
    dense.merge(Histogram.from_wire(u16([3, 5, 9]), u32([2, 0, 5])))
    assert dense.counts == {3: 4, 9: 10}


@pytest.mark.parametrize("case", list(BAD_HISTOGRAMS))
def test_histogram_from_wire_rejects(case: str) -> None:
    indexes, counts = BAD_HISTOGRAMS[case]
    with pytest.raises(HistogramFormatError):
        Histogram.from_wire(indexes, counts)


def test_opstats_wire_round_trip() -> None:
    st = OpStats("op")
    for v in (5, 500, 5_000_000, 10**12):
        st.record_ok(v)
    st.fail = 3
    st.statuses = {200: 4, 503: 3}
    st.sent, st.received = 1234, 56789
    back = OpStats.from_wire(st.to_wire())
    assert (back.name, back.ok, back.fail, back.sum_ns, back.min_ns, back.max_ns) == (
        st.name, st.ok, st.fail, st.sum_ns, st.min_ns, st.max_ns)
    assert back.hist.counts == st.hist.counts
    assert (back.statuses, back.sent, back.received) == ({200: 4, 503: 3}, 1234, 56789)
    failed = OpStats("f")
    failed.fail = 2
    back = OpStats.from_wire(failed.to_wire())
    assert back.ok == 0 and back.fail == 2 and back.min_value is None
    back.record_ok(77)  # the empty min must not be 0 after the trip
    assert back.min_value == 77


def test_a_name_with_http_figures_but_no_ended_call_still_travels() -> None:
    t = Totals()
    st = t.op("long call")
    st.statuses[200] = 2
    st.sent, st.received = 300, 900
    back = Totals.from_wire(t.to_wire())
    assert back.ops["long call"].statuses == {200: 2}
    assert (back.ops["long call"].sent, back.ops["long call"].received) == (300, 900)


def test_totals_wire_round_trip() -> None:
    t = full_totals()
    back = Totals.from_wire(t.to_wire())
    assert snapshot(back) == snapshot(t)
    assert "nothing" not in back.ops
    assert Totals.from_wire(Totals().to_wire()).is_empty()


def good_op() -> list[Any]:
    return ["op", 2, 0, 30, 10, 20, u16([10, 20]), u32([1, 1]), [[200, 2]], 100, 2000, [],
            False]


def with_field(i: int, value: Any) -> list[Any]:
    o = good_op()
    o[i] = value
    return o


BAD_OPS: dict[str, Any] = {
    "short": good_op()[:7],
    "long": [*good_op(), 1],
    "not a list": tuple(good_op()),
    "empty name": with_field(0, ""),
    "int name": with_field(0, 5),
    "bool ok": with_field(1, True),
    "negative ok": with_field(1, -2),
    "negative fail": with_field(2, -1),
    "bool fail": with_field(2, False),
    "float sum": with_field(3, 30.0),
    "negative min": with_field(4, -1),
    "str max": with_field(5, "20"),
    "histogram total != ok": with_field(1, 3),
    "mismatched arrays": with_field(7, u32([1])),
    "index out of range": with_field(6, u16([10, MAX_INDEX + 1])),
    "negative bytes sent": with_field(9, -1),
    "float bytes received": with_field(10, 1.5),
    "status not a pair": with_field(8, [[200]]),
    "status code out of range": with_field(8, [[42, 2]]),
    "status count zero": with_field(8, [[200, 0]]),
    "step not a bool": with_field(12, 1),
    "status listed twice": with_field(8, [[200, 1], [200, 1]]),
    "too many status codes": with_field(8, [[100 + i, 1] for i in range(MAX_STATUS_CODES)]
                                        + [[100, 1]]),
}


@pytest.mark.parametrize("case", list(BAD_OPS))
def test_opstats_from_wire_rejects(case: str) -> None:
    with pytest.raises(StatsFormatError):
        OpStats.from_wire(BAD_OPS[case])


BAD_TOTALS: dict[str, Any] = {
    "not a list": {"ops": []},
    "short": [[]],
    "ops not a list": [{}, []],
    "duplicate op names": [[good_op(), good_op()], []],
    "bad op": [[with_field(1, -1)], []],
    "error zero count": [[], [["op", "E", "m", 0]]],
    "error bool count": [[], [["op", "E", "m", True]]],
    "error short": [[], [["op", "E", 1]]],
    "error int text": [[], [["op", "E", 5, 1]]],
    "error not a list": [[], ["op"]],
}


@pytest.mark.parametrize("case", list(BAD_TOTALS))
def test_totals_from_wire_rejects(case: str) -> None:
    with pytest.raises(StatsFormatError):
        Totals.from_wire(BAD_TOTALS[case])


def test_good_op_fixture_is_accepted() -> None:
    st = OpStats.from_wire(good_op())
    assert (st.ok, st.min_ns, st.max_ns) == (2, 10, 20)
    assert Totals.from_wire([[good_op()], [["op", "E", "m", 1]]]).ok == 2
