"""The master's batch merge gives exactly the sum of the deltas merged one by one.

Random deltas (several workers, agents, seconds and names; either model; named steps,
status codes, errors, figures up to 64 bits) are merged by ``Aggregator.handle_batch``
in random batches, and every figure it keeps is checked against ``Totals.merge`` of the
same deltas as ``decode`` reads them, and against sums taken here for the series.
"""

from __future__ import annotations

import itertools
from typing import Any

import zmq.asyncio
from hypothesis import given, settings
from hypothesis import strategies as hs

from loadmaster.aggregator import Aggregator
from loadmaster.series import Series
from protocol.stats import MAX_ERRORS_PER_NAME, Totals
from protocol.wire.codec import decode, encode_stats, pack
from protocol.wire.deltas import DELTA_HEADER
from protocol.wire.messages import Delta

RUN_ID = "0123456789abcdef"
TOPIC = RUN_ID.encode()
WORKERS = (("a", 0), ("a", 1), ("b", 0), ("b", 3))
NAMES = ("GET", "POST", "login")
BIG = 2**64 - 1


@hs.composite
def operation(draw: hs.DrawFn, totals: Totals, name: str, open_model: bool) -> None:
    st = totals.op(name)
    for v in draw(hs.lists(hs.integers(0, 10**10), max_size=12)):
        st.record_ok(v)
    st.fail = draw(hs.integers(0, 5))
    if draw(hs.booleans()):  # any figure the wire allows: the sum need not match the calls
        st.sum_ns = draw(hs.integers(0, BIG))
        st.max_ns = draw(hs.integers(st.max_ns, BIG))
        st.sent, st.received = draw(hs.integers(0, BIG)), draw(hs.integers(0, BIG))
    st.statuses = draw(hs.dictionaries(hs.sampled_from((200, 404, 500, 503)),
                                       hs.integers(1, 2**40), max_size=3))
    st.step = draw(hs.integers(0, 4)) == 0
    if open_model:
        sched = st.schedule()
        for v, _ in st.hist.items():  # as many as the successes (one per bucket is fine)
            n = st.hist.counts[v]
            sched.service.record(draw(hs.integers(0, 10**9)), n)
            sched.lag.record(draw(hs.integers(0, 10**8)), n)
        sched.late = draw(hs.sampled_from((0, 1, BIG)))
        sched.dropped = draw(hs.integers(0, 3))


@hs.composite
def deltas(draw: hs.DrawFn) -> list[Delta]:
    out = []
    seqs = dict.fromkeys(WORKERS, 0)
    for _ in range(draw(hs.integers(1, 14))):
        agent, worker = draw(hs.sampled_from(WORKERS))
        seqs[agent, worker] += draw(hs.sampled_from((1, 1, 1, 2)))  # now and then a gap
        totals = Totals()
        open_model = draw(hs.booleans())
        for name in draw(hs.lists(hs.sampled_from(NAMES), unique=True, max_size=3)):
            draw(operation(totals, name, open_model))
        for _ in range(draw(hs.integers(0, 3))):
            totals.add_error((draw(hs.sampled_from(NAMES)), "E", draw(hs.sampled_from(
                ("m", "n", "x" * 400)))), draw(hs.integers(1, 9)))
        out.append(Delta(agent=agent, worker=worker, seq=seqs[agent, worker],
                         second=draw(hs.integers(1, 4)), clients=draw(hs.integers(0, 9)),
                         totals=totals, cpu_seconds=draw(hs.floats(0, 2)),
                         loop_lag=draw(hs.floats(0, 0.5)), sched_lag=0.0))
    return out


def decoded(d: Delta) -> Delta:
    msg = decode([DELTA_HEADER, pack(d)])
    assert isinstance(msg, Delta)
    return msg


def op_figures(t: Totals, kinds: bool = True) -> Any:
    """Every figure of every name, in the order of the names; histograms as dicts."""
    return [(n, st.ok, st.fail, st.sum_ns, st.min_ns, st.max_ns, st.sent, st.received,
             list(st.statuses.items()), st.step, st.late, st.dropped, st.sched is not None,
             st.hist.counts, *((st.sched.service.counts, st.sched.lag.counts)
                               if kinds and st.sched is not None else ()))
            for n, st in t.ops.items()]


def series_figures(seconds: dict[int, Any]) -> Any:
    return {k: (s.clients, s.ok, s.fail, s.late, s.dropped,
                [(n, ns.ok, ns.fail, ns.late, ns.dropped, ns.step, ns.hist.counts,
                  None if ns.service is None else ns.service.counts,
                  None if ns.lag is None else ns.lag.counts) for n, ns in s.names.items()],
                [(a, x.ok, x.fail) for a, x in s.agents.items()])
            for k, s in seconds.items()}


def expected_series(ds: list[Delta]) -> Any:
    """Each second's figures as ``Series.add`` and the histograms' merges make them."""
    series = Series()
    for d in ds:
        series.add(d.second, d.agent, d.clients, d.totals)
        for name, st in d.totals.ops.items():
            for kind, h in enumerate([st.hist] if st.sched is None
                                     else [st.hist, st.sched.service, st.sched.lag]):
                if h.total:
                    series.histogram(d.second, name, kind).merge(h)
    return series_figures(series.seconds)


@settings(max_examples=150, deadline=None)
@given(ds=deltas(), cuts=hs.lists(hs.integers(0, 14), max_size=4))
def test_a_batch_merges_to_the_sum_of_its_deltas(ds: list[Delta], cuts: list[int]) -> None:
    agg = Aggregator(zmq.asyncio.Context.instance(), "127.0.0.1", RUN_ID)
    for agent, worker in WORKERS:
        agg.expect(agent, worker)
    frames = [encode_stats(TOPIC, d) for d in ds]
    bounds = [0, *sorted(c for c in cuts if c < len(frames)), len(frames)]
    for lo, hi in itertools.pairwise(bounds):
        agg.handle_batch(frames[lo:hi])
    got = [decoded(d) for d in ds]
    assert agg.bad_messages == agg.implausible == 0
    # the run's totals: Totals.merge of every delta
    want = Totals(full=True)
    for d in got:
        want.merge(d.totals)
    assert op_figures(agg.totals) == op_figures(want)
    assert list(agg.totals.errors.items()) == list(want.errors.items())
    # each worker's: its deltas' counters and their corrected latencies
    for key, w in agg.workers.items():
        mine = Totals(dense=True)
        for d in got:
            if (d.agent, d.worker) == key:
                mine.merge(d.totals)
        assert op_figures(w.totals(), kinds=False) == op_figures(mine, kinds=False)
        assert list(w.counts.errors.items()) == list(mine.errors.items())
        assert w.missed == sum(d.seq - prev - 1 for d, prev in _seqs(got, key))
    assert series_figures(agg.series.seconds) == expected_series(got)


def _seqs(ds: list[Delta], key: tuple[str, int]) -> list[tuple[Delta, int]]:
    """Each delta of a worker with the sequence number before it (-1 at first)."""
    mine = [d for d in ds if (d.agent, d.worker) == key]
    return list(zip(mine, [-1, *(d.seq for d in mine)], strict=False))


def test_a_name_over_the_distinct_error_limit_merges_as_one_by_one() -> None:
    """A delta's errors past the limit of distinct ones go to 'other' as in ``decode``."""
    t = Totals()
    t.op("GET").record_ok(1000)
    t.errors = {("GET", "E", f"m{i}"): 1 for i in range(MAX_ERRORS_PER_NAME + 20)}
    d = Delta(agent="a", worker=0, seq=0, second=1, clients=1, totals=t, cpu_seconds=0.1,
              loop_lag=0.0)
    agg = Aggregator(zmq.asyncio.Context.instance(), "127.0.0.1", RUN_ID)
    agg.expect("a", 0)
    agg.handle_batch([encode_stats(TOPIC, d), encode_stats(TOPIC, Delta(
        agent="a", worker=0, seq=1, second=2, clients=1, totals=t, cpu_seconds=0.1,
        loop_lag=0.0))])
    want = Totals(full=True)
    for _ in range(2):
        want.merge(decoded(d).totals)
    assert list(agg.totals.errors.items()) == list(want.errors.items())
    assert len(want.errors) == MAX_ERRORS_PER_NAME + 1
