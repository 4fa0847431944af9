"""The open model on a worker: the arrival schedule, its split over workers, and the
scheduler that runs it on a client pool (late, dropped, the three latencies)."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from loadagent.arrivals import BLOCK, EARLY_NS, END, Arrivals, OpenScheduler
from protocol.client import ClientProtocol
from protocol.histogram import bucket_value
from protocol.plan import arrival_time, arrival_workers, clients_of, scheduled_arrivals
from protocol.stats import LATE_AFTER_NS, OpStats, StatsFormatError, Totals


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 30))


def times_of(arrivals: Arrivals) -> list[int]:
    out = []
    while arrivals.next_ns < END:
        out.append(arrivals.next_ns)
        arrivals.take()
    return out


def uniform(worker: int, workers: int, rate: float = 100.0, run_time: float = 2.0,
            time_unit: float = 1.0) -> Arrivals:
    return Arrivals(t0_ns=0, run_time=run_time, rate=rate, time_unit=time_unit,
                    worker=worker, workers=workers, poisson=False, seed="s")


@pytest.mark.parametrize(("rate", "unit", "run_time", "workers"), [
    (100, 1, 2, 1), (100, 1, 2, 3), (7, 1, 3, 4), (100, 60, 60, 7), (1 / 3, 1, 10, 2),
    (1000, 1, 1.2345, 5), (3, 1, 1, 8)])
def test_the_shares_sum_exactly_to_the_schedule_and_interleave(
        rate: float, unit: float, run_time: float, workers: int) -> None:
    total = scheduled_arrivals(rate, unit, run_time)
    per = [times_of(uniform(w, workers, rate, run_time, unit)) for w in range(workers)]
    assert [len(p) for p in per] == [scheduled_arrivals(rate, unit, run_time, w, workers)
                                     for w in range(workers)]
    assert sum(len(p) for p in per) == total
    # merged, they are exactly the one schedule: arrival g on worker g mod W
    merged = sorted(t for p in per for t in p)
    assert merged == [round(arrival_time(g, rate, unit) * 1e9) for g in range(total)]
    for g, t in enumerate(merged[:50]):
        assert t in per[g % workers]


@settings(max_examples=150, deadline=None)
@given(rate=st.one_of(st.floats(0.001, 2e6), st.integers(1, 2_000_000).map(float)),
       unit=st.sampled_from([1.0, 60.0, 3600.0, 0.5, 0.001]),
       workers=st.integers(1, 64), data=st.data(), t0_ns=st.integers(0, 10**15))
def test_a_uniform_schedules_blocks_are_its_arrivals_own_times(
        rate: float, unit: float, workers: int, data: st.DataObject, t0_ns: int) -> None:
    # a block is computed at once (numpy) for a constant rate: the very same integers as
    # each arrival's own formula (Arrivals._time), to the nanosecond
    worker = data.draw(st.integers(0, workers - 1))
    a = Arrivals(t0_ns=t0_ns, run_time=data.draw(st.floats(0.5, 20_000.0)), rate=rate,
                 time_unit=unit, worker=worker, workers=workers, poisson=False, seed="x")
    for _ in range(3):
        n = len(a.times) - (1 if a.times[-1] == END else 0)
        k = int(a._k)
        assert a.times[:n] == [a._time(j) for j in range(k - n, k)]
        assert all(type(t) is int for t in a.times)
        if a.times[-1] == END:
            break
        a.refill()


def test_a_schedule_per_minute_keeps_its_count() -> None:
    # 100 per minute for a minute: 100 calls, not 101 through a float's rounding
    assert scheduled_arrivals(100, 60, 60) == 100
    assert scheduled_arrivals(1 / 3, 1, 10) == 4  # at 0, 3, 6 and 9 s


def test_workers_without_a_client_take_no_arrivals() -> None:
    assert arrival_workers(8, 3) == 3
    assert arrival_workers(2, 1000) == 2
    assert [clients_of(w, 8, 3) for w in range(8)] == [1, 1, 1, 0, 0, 0, 0, 0]


def test_poisson_arrivals_are_random_reproducible_and_of_the_rate() -> None:
    def poisson(worker: int, seed: str) -> list[int]:
        return times_of(Arrivals(t0_ns=0, run_time=100.0, rate=200.0, time_unit=1.0,
                                 worker=worker, workers=2, poisson=True, seed=seed))

    a = poisson(0, "run:0")
    assert a == poisson(0, "run:0")  # the same run and worker: the same schedule
    assert a != poisson(0, "run:1")
    gaps = [y - x for x, y in itertools.pairwise(a)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1e9 / 100, rel=0.05)  # 200/s over two workers
    # exponential gaps: the standard deviation is the mean (uniform ones have none)
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, abs=0.1)
    assert 9_000 <= len(a) <= 11_000


def test_skip_before_and_stop_at_and_due() -> None:
    a = uniform(0, 1, rate=100.0, run_time=2.0)  # every 10 ms
    assert a.due(0) == 1 and a.due(-1) == 0
    assert a.due(95_000_000) == 10
    assert a.skip_before(55_000_000) == 6  # 0, 10, ..., 50 ms
    assert a.next_ns == 60_000_000
    a.stop_at(100_000_000)
    assert times_of(a) == [60_000_000, 70_000_000, 80_000_000, 90_000_000]
    assert a.skip_before(10**12) == 0


@pytest.mark.parametrize("block_end", [False, True])
def test_a_stop_keeps_an_arrival_taken_that_was_due_within_the_early_start(
        block_end: bool) -> None:
    """A call may start up to EARLY_NS before its arrival is due (on time, within the
    timers' resolution): a stop in that window keeps its arrival in the schedule, so
    the calls run still equal the arrivals before its end."""
    whole = uniform(0, 1, rate=100.0, run_time=20.0)  # every 10 ms
    for early_by in (1, 500_000, EARLY_NS - 1):
        a = uniform(0, 1, rate=100.0, run_time=20.0)
        taken = BLOCK if block_end else 6  # up to the last of a block, which refills
        due = (taken - 1) * 10_000_000  # the last one taken
        assert a.skip_before(due + 1) == taken
        assert a.i == (0 if block_end else taken)  # (past a block's last: the next block)
        a.stop_at(due - early_by)
        assert a.end_ns == due + 1
        assert whole.skip_before(a.end_ns) == taken  # the schedule: the ones taken
        whole = uniform(0, 1, rate=100.0, run_time=20.0)
        assert a.skip_before(10**12) == 0
    # a stop further from it than that cuts where it comes
    a = uniform(0, 1, rate=100.0, run_time=20.0)
    a.skip_before(50_000_001)
    a.stop_at(50_000_000 - EARLY_NS)
    assert a.end_ns == 50_000_000 - EARLY_NS


@pytest.mark.parametrize("limit_s", [0.0, 0.3, 1.0, 2.5, 7.77, 10.0, 60.0])
def test_skipping_many_counts_what_taking_one_by_one_would(limit_s: float) -> None:
    # 1000/s over 3 workers, blocks of BLOCK: skips past several blocks are counted,
    # not computed one by one, and must land where taking one at a time does
    a, b = uniform(1, 3, rate=1000.0, run_time=10.0), uniform(1, 3, rate=1000.0, run_time=10.0)
    a.take()
    b.take()
    limit = int(limit_s * 1e9)
    stepped = 0
    while b.next_ns < limit and b.next_ns < END:
        b.take()
        stepped += 1
    assert a.skip_before(limit) == stepped
    assert a.next_ns == b.next_ns
    assert times_of(a) == times_of(b)
    assert BLOCK * 3 < 3333  # a worker's 3333 arrivals: the skips above cross blocks


def test_a_poisson_skip_past_blocks_draws_a_count_of_the_rate() -> None:
    counts = []
    for seed in range(20):
        a = Arrivals(t0_ns=0, run_time=100.0, rate=200.0, time_unit=1.0, worker=0,
                     workers=2, poisson=True, seed=str(seed))
        counts.append(a.skip_before(50 * 10**9))  # 100/s for 50 s: 5000 on average
        rest = times_of(a)
        assert rest[0] >= 50 * 10**9 and rest == sorted(rest) and rest[-1] < 100 * 10**9
    assert statistics.fmean(counts) == pytest.approx(5000, rel=0.02)
    assert a.drop_rest() == 0


def test_a_stop_beyond_the_current_block_keeps_every_arrival_before_it() -> None:
    a = uniform(0, 1, rate=1000.0, run_time=10.0)  # 1 ms apart: BLOCK covers ~0.5 s
    a.stop_at(2 * 10**9)
    assert times_of(a) == [k * 1_000_000 for k in range(2000)]
    b = uniform(0, 1, rate=1000.0, run_time=10.0)
    b.stop_at(2 * 10**9)
    assert b.drop_rest() == 2000 and b.next_ns == END


class Timed(ClientProtocol):
    """A call that takes ``delay`` seconds, or ``slow`` for the calls ``slow_at`` picks."""

    delay = 0.001
    made = 0
    calls = 0
    slow_from: float | None = None  # perf_counter of a stall's start
    slow_for = 0.0

    def __init__(self) -> None:
        type(self).made += 1

    async def execute(self) -> None:
        cls = type(self)
        cls.calls += 1
        now = time.perf_counter()
        if cls.slow_from is not None and cls.slow_from <= now < cls.slow_from + cls.slow_for:
            await asyncio.sleep(cls.slow_from + cls.slow_for - now)
        else:
            await asyncio.sleep(cls.delay)


def make_timed(**attrs: Any) -> type[Timed]:
    return type("Timed", (Timed,), {"made": 0, "calls": 0, **attrs})


async def run_open(cls: type[ClientProtocol], *, rate: float, run_time: float, pool: int,
                   pre: int, max_lag: float = 10.0,
                   stop_early: float | None = None) -> tuple[Totals, OpenScheduler]:
    """One worker's open schedule from now, stopped at run_time (or ``stop_early``)."""
    delta = Totals()
    t0_ns = time.perf_counter_ns() + 50_000_000
    arrivals = Arrivals(t0_ns=t0_ns, run_time=run_time, rate=rate, time_unit=1.0,
                        worker=0, workers=1, poisson=False, seed="x")
    sched = OpenScheduler(cls, "http://unused", delta, None, arrivals, pool, pre, max_lag)
    sched.start_pool(pre)
    await asyncio.sleep(0.05 + (run_time if stop_early is None else stop_early))
    await sched.stop(5.0)
    # every arrival of the schedule, up to where it ended, was run or dropped
    st = delta.ops.get(cls.__name__)
    if st is not None:
        whole = Arrivals(t0_ns=t0_ns, run_time=run_time, rate=rate, time_unit=1.0,
                         worker=0, workers=1, poisson=False, seed="x")
        assert st.ok + st.fail + st.dropped == whole.skip_before(arrivals.end_ns)
    return delta, sched


def test_on_schedule_every_call_runs_on_time_and_is_timed_three_ways() -> None:
    cls = make_timed(delay=0.002)

    async def main() -> None:
        delta, _ = await run_open(cls, rate=200.0, run_time=1.0, pool=4, pre=4)
        st = delta.ops["Timed"]
        assert st.sched is not None
        assert st.ok == 200 and st.fail == 0  # exactly the schedule
        assert st.late == 0 and st.dropped == 0
        assert cls.made == 4  # the pool was enough: none made on demand
        assert st.sched.service.total == st.sched.lag.total == st.hist.total == 200
        service = st.sched.service.percentile(0.5)
        assert service is not None and 2_000_000 <= service < 20_000_000
        lag = st.sched.lag.percentile(0.99)
        assert lag is not None and lag < LATE_AFTER_NS
        # from the intended start = service + lag, call by call, so in the mean too
        mean_service = sum(bucket_value(i) * c for i, c in st.sched.service.items()) / 200
        mean_lag = sum(bucket_value(i) * c for i, c in st.sched.lag.items()) / 200
        assert st.sum_ns / 200 == pytest.approx(mean_service + mean_lag, rel=0.02)

    run(main)


def test_a_stall_makes_calls_late_and_shows_in_the_corrected_latency_only() -> None:
    # 100/s on a pool of 2: a 0.5 s stall holds both clients; the calls due meanwhile
    # wait for them and start late, so the corrected latency shows the stall, the
    # service time does not
    cls = make_timed(delay=0.001, slow_for=0.5)

    async def main() -> None:
        cls.slow_from = time.perf_counter() + 0.05 + 0.5
        delta, _ = await run_open(cls, rate=100.0, run_time=2.0, pool=2, pre=2)
        st = delta.ops["Timed"]
        assert st.sched is not None
        assert st.ok + st.fail + st.dropped == 200 and st.dropped == 0
        assert 30 <= st.late <= 60  # the ~50 calls due during the stall
        p99 = st.percentile(0.99)
        service_p90 = st.sched.service.percentile(0.9)
        lag_p99 = st.sched.lag.percentile(0.99)
        assert p99 is not None and service_p90 is not None and lag_p99 is not None
        assert p99 > 300_000_000  # the stall, from the users' side
        assert service_p90 < 50_000_000  # the server's side: only 2 calls were slow
        assert lag_p99 > 300_000_000  # the difference: waiting for a free client

    run(main)


def test_calls_that_cannot_start_within_max_schedule_lag_are_dropped() -> None:
    cls = make_timed(delay=0.001, slow_for=0.6)

    async def main() -> None:
        cls.slow_from = time.perf_counter() + 0.05 + 0.3
        delta, _ = await run_open(cls, rate=100.0, run_time=1.5, pool=1, pre=1,
                                  max_lag=0.1)
        st = delta.ops["Timed"]
        # every call is accounted for: run, or dropped
        assert st.ok + st.fail + st.dropped == 150
        assert 35 <= st.dropped <= 60  # ~50 due in the 0.6 s, less the last 0.1 s's
        assert st.late >= 1

    run(main)


def test_the_pool_grows_on_demand_up_to_max_users() -> None:
    cls = make_timed(delay=0.05)  # 50 ms calls at 200/s need ~10 clients

    async def main() -> None:
        delta, sched = await run_open(cls, rate=200.0, run_time=1.0, pool=30, pre=0)
        st = delta.ops["Timed"]
        assert st.ok == 200 and st.dropped == 0
        assert 8 <= cls.made <= 30
        assert sched.started == cls.made

    run(main)


def test_a_pool_too_small_is_never_exceeded() -> None:
    cls = make_timed(delay=0.05)

    async def main() -> None:
        delta, _ = await run_open(cls, rate=200.0, run_time=1.0, pool=3, pre=1)
        st = delta.ops["Timed"]
        assert cls.made == 3
        assert st.ok + st.dropped == 200
        # 3 clients of 50 ms start 60 calls a second, not 200: nearly all late, and the
        # backlog not started by the stop is dropped
        assert 40 <= st.ok <= 70 and st.late >= st.ok - 5
        assert st.dropped >= 130

    run(main)


def test_a_stop_before_run_time_ends_the_schedule_there() -> None:
    cls = make_timed(delay=0.001)

    async def main() -> None:
        delta, _ = await run_open(cls, rate=100.0, run_time=10.0, pool=2, pre=2,
                                  stop_early=0.5)
        st = delta.ops["Timed"]
        assert 45 <= st.ok <= 56  # the first half second's, not ten seconds'
        assert st.dropped == 0  # the arrivals after the stop are not in the schedule

    run(main)


def test_the_schedule_figures_travel_on_the_wire_and_merge() -> None:
    st = OpStats("op")
    st.record_ok(5_000)
    sched = st.schedule()
    sched.service.record(4_000)
    sched.lag.record(1_000)
    sched.late, sched.dropped = 3, 7
    back = OpStats.from_wire(st.to_wire())
    assert back.sched is not None
    assert (back.late, back.dropped) == (3, 7)
    assert back.sched.service.counts == sched.service.counts
    assert back.sched.lag.counts == sched.lag.counts
    total = Totals(dense=True)
    total.merge(Totals(ops={"op": back}))
    total.merge(Totals(ops={"op": back}))
    assert (total.ops["op"].late, total.ops["op"].dropped) == (6, 14)
    assert total.ops["op"].sched is not None
    assert total.ops["op"].sched.lag.total == 2
    closed = OpStats("op")
    closed.record_ok(5)
    assert OpStats.from_wire(closed.to_wire()).sched is None


@pytest.mark.parametrize("sched", [
    [1, 2], [-1, 0, b"", b"", b"", b""], [0, "1", b"", b"", b"", b""], "x",
    [0, 0, b"", b"", b"\x01\x00", b"\x01\x00\x00\x00"]])  # a lag histogram of 1, ok 0
def test_bad_schedule_figures_are_refused(sched: Any) -> None:
    wire = OpStats("op").to_wire()
    wire[-1] = sched
    with pytest.raises(StatsFormatError, match="'op'"):
        OpStats.from_wire(wire)


class Instant(ClientProtocol):
    """A call that never suspends: a pool of them yields to the loop every few calls."""

    def execute(self) -> Any:  # type: ignore[override]
        return _done()


async def _done() -> None:
    return None


def test_a_stop_while_clients_yield_loses_no_arrival() -> None:
    cls = type("Instant", (Instant,), {})

    async def main() -> None:
        # far over what the loop can start: clients are always due, and yield every few
        # calls; stopped early, the arrivals they hold while yielding are dropped
        delta, _ = await run_open(cls, rate=2_000_000.0, run_time=5.0, pool=64, pre=64,
                                  stop_early=0.3)
        st = delta.ops["Instant"]
        assert st.ok > 1000 and st.dropped > 1000  # (run_open checks the sum)

    run(main)


class FailsFirst(ClientProtocol):
    """init_before_use fails for the first ``failures`` clients made."""

    failures = 3
    made = 0

    def init_before_use(self, host: str) -> None:
        cls = type(self)
        cls.made += 1
        if cls.made <= cls.failures:
            raise ConnectionError(f"init {cls.made} failed")

    async def execute(self) -> None:
        await asyncio.sleep(0.001)


def test_a_failed_init_is_an_error_not_a_scheduled_call_and_frees_its_place() -> None:
    cls = type("FailsFirst", (FailsFirst,), {"made": 0})

    async def main() -> None:
        delta, sched = await run_open(cls, rate=100.0, run_time=1.0, pool=5, pre=5)
        st = delta.ops["FailsFirst"]
        assert st.ok == 100 and st.fail == 0 and st.dropped == 0
        assert sum(n for (name, _, _), n in delta.errors.items() if name == "FailsFirst") == 3
        assert sched.started >= 2  # the pool made up for the failed ones as needed

    run(main)


def test_drops_are_counted_as_their_time_passes_not_when_a_client_is_free() -> None:
    cls = make_timed(delay=0.001, slow_for=1.0)

    async def main() -> None:
        cls.slow_from = time.perf_counter() + 0.05 + 0.2
        delta = Totals()
        t0_ns = time.perf_counter_ns() + 50_000_000
        arrivals = Arrivals(t0_ns=t0_ns, run_time=2.0, rate=100.0, time_unit=1.0,
                            worker=0, workers=1, poisson=False, seed="x")
        sched = OpenScheduler(cls, "http://unused", delta, None, arrivals, 1, 1, 0.2)
        sched.start_pool(1)
        await asyncio.sleep(0.05 + 0.2 + 0.7)  # 0.7 s into the 1 s stall
        during = delta.ops["Timed"].dropped
        await asyncio.sleep(1.1)
        await sched.stop(5.0)
        st = delta.ops["Timed"]
        # 0.7 s in, the calls due over 0.2 s ago (~50) are already counted
        assert 35 <= during <= 60, during
        assert st.ok + st.fail + st.dropped == 200

    run(main)
