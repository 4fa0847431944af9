"""loadmaster.series: every second of a run, merged over workers and agents."""

from __future__ import annotations

import random

from loadmaster.series import OPEN_MAX, SETTLE, Series
from protocol.histogram import DenseHistogram, Histogram
from protocol.stats import Totals


def delta(rng: random.Random, names: dict[str, int], fail: int = 0) -> Totals:
    """A worker's delta: ``names[name]`` successes of random latencies each, as decoded."""
    t = Totals()
    for name, ok in names.items():
        st = t.op(name)
        for _ in range(ok):
            st.record_ok(int(rng.lognormvariate(14, 1)))
        st.fail = fail
    return Totals.from_wire(t.to_wire())  # as the master gets it: packed arrays


def add(series: Series, second: int, agent: str, clients: int, totals: Totals) -> None:
    """One delta into the series, histograms too, as the aggregator merges it."""
    series.add(second, agent, clients, totals)
    for name, st in totals.ops.items():
        if st.ok:
            series.histogram(second, name).merge(st.hist)


def test_each_second_holds_the_sum_of_its_deltas_per_name_and_agent() -> None:
    rng = random.Random(1)
    series = Series()
    sent: dict[tuple[int, str], Histogram] = {}
    for second in (1, 2, 3):
        for agent, worker_ok in (("a", 10), ("a", 20), ("b", 5)):
            d = delta(rng, {"GET": worker_ok, "POST": 1}, fail=2)
            add(series, second, agent, clients=4, totals=d)
            ref = sent.setdefault((second, "GET"), Histogram())
            ref.merge(d.ops["GET"].hist)
    s2 = series.seconds[2]
    assert (s2.ok, s2.fail, s2.clients) == (35 + 3, 12, 12)
    assert (s2.names["GET"].ok, s2.names["GET"].fail) == (35, 6)
    assert s2.names["GET"].hist.counts == sent[(2, "GET")].counts
    assert (s2.agents["a"].ok, s2.agents["a"].fail, s2.agents["b"].ok) == (32, 8, 6)
    assert series.latest == 3


def test_seconds_far_behind_are_made_sparse_and_still_take_late_deltas() -> None:
    rng = random.Random(2)
    series = Series()
    first = delta(rng, {"GET": 50})
    add(series, 1, "a", 1, first)
    assert isinstance(series.seconds[1].names["GET"].hist, DenseHistogram)
    for second in range(2, SETTLE + 3):
        add(series, second, "a", 1, delta(rng, {"GET": 1}))
    old = series.seconds[1]
    assert series.settled(1) and isinstance(old.names["GET"].hist, Histogram)
    assert old.names["GET"].hist.counts == first.ops["GET"].hist.counts
    late = delta(rng, {"GET": 7})
    add(series, 1, "b", 1, late)  # a worker far behind: still merged
    expected = Histogram()
    expected.merge(first.ops["GET"].hist)
    expected.merge(late.ops["GET"].hist)
    assert series.seconds[1].names["GET"].hist.counts == expected.counts
    assert series.seconds[1].ok == 57


def test_merged_window_gives_the_percentiles_of_those_seconds_only() -> None:
    series = Series()
    for second, latency in ((1, 1_000_000), (2, 2_000_000), (3, 3_000_000)):
        t = Totals()
        for _ in range(100):
            t.op("x").record_ok(latency)
        add(series, second, "a", 1, Totals.from_wire(t.to_wire()))
    recent = Series.merged(series.window(2, 3))
    assert recent.ok == 200
    p25, p99 = recent.hist.percentile(0.25), recent.hist.percentile(0.99)
    assert p25 is not None and abs(p25 - 2_000_000) / 2_000_000 < 1 / 256
    assert p99 is not None and abs(p99 - 3_000_000) / 3_000_000 < 1 / 256
    assert Series.merged(series.window(1, 3), "other").ok == 0
    assert series.window(5, 9) == []


def test_a_second_far_in_the_future_does_not_keep_every_second_dense() -> None:
    rng = random.Random(4)
    series = Series()
    add(series, 10_000_000, "forged", 1, delta(rng, {"GET": 1}))
    for second in range(1, 61):
        add(series, second, "a", 1, delta(rng, {"GET": 3}))
    dense = [k for k, s in series.seconds.items()
             if any(isinstance(ns.hist, DenseHistogram) for ns in s.names.values())]
    assert len(dense) <= OPEN_MAX
    assert series.seconds[1].names["GET"].hist.total == 3  # settled, still counted


def test_a_name_without_successes_holds_no_dense_histogram() -> None:
    series = Series()
    add(series, 1, "a", 1, delta(random.Random(5), {"GET": 0}, fail=4))
    ns = series.seconds[1].names["GET"]
    assert (ns.ok, ns.fail) == (0, 4) and isinstance(ns.hist, Histogram)
