"""Histograms by the batch: ``unpack_many`` agrees with ``unpack`` one by one, and a
``HistogramArena`` holds what was added to each of its histograms through every move
and compaction."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.histogram import (
    MAX_COUNT,
    MAX_INDEX,
    Histogram,
    HistogramArena,
    HistogramFormatError,
    unpack,
    unpack_many,
)
from tests.wire_helpers import u16, u32, u64

# -- unpack_many ---------------------------------------------------------------------------


@st.composite
def packed(draw: st.DrawFn) -> tuple[Any, Any]:
    """A histogram's two byte strings as a peer might send them: mostly good, some not."""
    indexes = sorted(draw(st.sets(st.integers(0, MAX_INDEX), max_size=40)))
    counts = draw(st.lists(st.integers(0, 1 << 32), min_size=len(indexes),
                           max_size=len(indexes)))
    flaw = draw(st.sampled_from(["none"] * 6 + ["swap", "repeat", "range", "short", "wide",
                                                "huge", "type"]))
    if flaw == "swap" and len(indexes) > 1:
        indexes[0], indexes[-1] = indexes[-1], indexes[0]
    elif flaw == "repeat" and indexes:
        indexes.append(indexes[-1])
        counts.append(1)
    elif flaw == "range" and indexes:
        indexes[-1] = draw(st.integers(MAX_INDEX + 1, 65535))
    small = [min(c, 0xFFFFFFFF) for c in counts]
    narrow = draw(st.booleans())  # 16-bit counts: the common case on the wire
    if narrow:
        small = [min(c, 0xFFFF) for c in counts]
    if flaw == "short":
        return u16(indexes), (u16(small) if narrow else u32(small))[:-1]
    if flaw == "huge":
        return u16(indexes), u64([MAX_COUNT + 1] * len(indexes))
    if flaw == "type":
        return list(indexes), u32(small)
    if flaw == "wide" or any(c > 0xFFFFFFFF for c in counts):
        return u16(indexes), u64(counts)
    if narrow:
        return u16(indexes), u16(small)
    return u16(indexes), u32(counts)


@settings(max_examples=400, deadline=None)
@given(st.lists(packed(), max_size=12))
def test_unpack_many_accepts_and_refuses_as_unpack_does(pairs: list[tuple[Any, Any]]) -> None:
    out = unpack_many(pairs)
    assert len(out.starts) == len(pairs) + 1
    for j, (indexes, counts) in enumerate(pairs):
        idx, cnt = out.span(j)
        try:
            want_idx, want_cnt = unpack(indexes, counts)
        except HistogramFormatError as e:
            assert out.errors[j] == str(e)
            assert idx.size == 0
            continue
        assert j not in out.errors
        assert idx.tolist() == want_idx.tolist() and cnt.tolist() == want_cnt.tolist()
        assert out.totals[j] == int(want_cnt.sum())
        if idx.size:
            assert (out.lows[j], out.highs[j]) == (int(idx[0]), int(idx[-1]) + 1)
        else:
            assert (out.lows[j], out.highs[j]) == (0, 0)


def test_unpack_many_of_nothing() -> None:
    out = unpack_many([])
    assert out.starts == [0] and out.indexes.size == 0 and out.errors == {}
    empty = unpack_many([(b"", b""), (u16([4]), u32([2]))])
    assert empty.span(0)[0].size == 0 and empty.totals == [0, 2]


def test_one_bad_histogram_leaves_the_others_of_its_batch_intact() -> None:
    good = Histogram({300: 5, 301: 7})
    pairs = [good.to_wire(), (u16([9, 3]), u32([1, 1])), good.to_wire()]
    out = unpack_many(pairs)
    assert set(out.errors) == {1} and "increase" in out.errors[1]
    assert [out.totals[0], out.totals[2]] == [12, 12]
    assert Histogram.from_arrays(*out.span(2)).counts == {300: 5, 301: 7}


# -- HistogramArena ------------------------------------------------------------------------


def test_an_arena_keeps_each_histogram_through_moves_and_compactions() -> None:
    rng = random.Random(7)
    arena = HistogramArena(capacity=256)  # small: every few adds move or compact
    slots = [arena.new() for _ in range(30)]
    expected: list[dict[int, int]] = [{} for _ in slots]
    for _ in range(400):
        k = rng.randrange(len(slots))
        # latencies that drift: each histogram's range grows now and then, both ways
        centre = rng.randint(500, 6000)
        indexes = sorted(rng.sample(range(max(0, centre - 300), min(MAX_INDEX, centre + 300)),
                                    rng.randint(1, 40)))
        counts = [rng.randint(1, 1000) for _ in indexes]
        offset = arena.offset(slots[k], indexes[0], indexes[-1] + 1)
        arena.add(np.array(indexes, np.intp) + offset, np.array(counts, np.uint64))
        for i, c in zip(indexes, counts, strict=True):
            expected[k][i] = expected[k].get(i, 0) + c
    assert arena.capacity > 256  # it grew
    for slot, want in zip(slots, expected, strict=True):
        idx, cnt = arena.packed(slot)
        assert dict(zip(idx.tolist(), cnt.tolist(), strict=True)) == want


def test_a_batch_adds_to_many_arena_histograms_at_once() -> None:
    arena = HistogramArena()
    a, b = arena.new(), arena.new()
    oa = arena.offset(a, 100, 103)
    ob = arena.offset(b, 5000, 5002)
    positions = np.array([100 + oa, 102 + oa, 5000 + ob, 5001 + ob, 100 + oa], np.intp)
    arena.add(positions, np.array([1, 2, 3, 4, 5], np.uint64))
    assert dict(zip(*(x.tolist() for x in arena.packed(a)), strict=True)) == {100: 6, 102: 2}
    assert dict(zip(*(x.tolist() for x in arena.packed(b)), strict=True)) == {5000: 3, 5001: 4}
    assert arena.packed(arena.new())[0].size == 0  # a new one is empty
