"""The master's stats aggregation, fed over a real PUB/SUB pair."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from loadmaster.aggregator import (
    GC_YOUNG,
    SATURATION_CPU,
    SATURATION_LAG,
    SATURATION_SECONDS,
    Aggregator,
    WorkerLive,
)
from loadmaster.config_values import GeneratorRule
from protocol.histogram import MAX_COUNT, MAX_INDEX, bucket_index
from protocol.stats import Totals
from protocol.wire.codec import HEADER, MAGIC, PROTOCOL_VERSION, encode_stats
from protocol.wire.messages import Delta, Hello
from tests.wire_helpers import u16, u32, u64

RUN_ID = "0123456789abcdef"
TOPIC = RUN_ID.encode()


def delta(worker: int, seq: int, ok: int, second: int | None = None,
          agent: str = "a", cpu: float = 0.5, lag: float = 0.0, clients: int = 3) -> Delta:
    t = Totals()
    st = t.op("op")
    for i in range(ok):
        st.record_ok(1_000_000 + i)
    return Delta(agent=agent, worker=worker, seq=seq, second=seq + 1 if second is None
                 else second, clients=clients, totals=t, cpu_seconds=cpu, loop_lag=lag)


async def feed(frames: list[list[bytes]], until: Callable[[Aggregator], bool],
               t0: float | None = None) -> Aggregator:
    """Publish ``frames`` on a real PUB socket into an Aggregator until ``until(agg)``."""
    ctx = zmq.asyncio.Context()
    agg = Aggregator(ctx, "127.0.0.1", RUN_ID)
    agg.t0 = t0
    port = agg.bind()
    agg.expect("a", 0)
    agg.expect("a", 1)
    serve = asyncio.get_running_loop().create_task(agg.serve())
    pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    pub.linger = 1000
    pub.connect(f"tcp://127.0.0.1:{port}")
    try:
        hello = encode_stats(TOPIC, Hello(agent="a", worker=0))
        deadline = time.monotonic() + 10
        while ("a", 0) not in agg.hellos:  # the slow-joiner handshake
            assert time.monotonic() < deadline, "subscription never became live"
            pub.send_multipart(hello)
            await asyncio.sleep(0.02)
        for f in frames:
            pub.send_multipart(f)
        deadline = time.monotonic() + 10
        while not until(agg):
            assert time.monotonic() < deadline, "the frames were not all handled"
            await asyncio.sleep(0.01)
    finally:
        pub.close()
        serve.cancel()
        await asyncio.gather(serve, return_exceptions=True)
        agg.close()
        ctx.term()
    return agg


def test_deltas_merge_and_sequence_gaps_are_counted() -> None:
    frames = [encode_stats(TOPIC, delta(0, s, ok=10)) for s in (0, 1, 3, 4)]  # seq 2 lost
    frames += [encode_stats(TOPIC, delta(1, s, ok=5)) for s in (0, 1, 2)]
    agg = asyncio.run(feed(frames, lambda a: a.workers[("a", 0)].next_seq == 5
                                                and a.workers[("a", 1)].next_seq == 3))
    assert agg.missed_deltas == 1
    assert agg.workers[("a", 0)].missed == 1
    assert agg.totals.ok == 4 * 10 + 3 * 5
    assert agg.clients() == 6
    assert agg.current_rps(1) == (15, 1)  # second 1: seq 0 of both workers


def test_bad_messages_are_dropped_and_the_aggregator_keeps_going() -> None:
    good = encode_stats(TOPIC, delta(0, 0, ok=7))
    header, body = good[1], good[2]
    frames = [
        [TOPIC, b"garbage", body],                       # bad header
        [TOPIC, HEADER.pack(MAGIC, 99, 18), body],       # another protocol version
        [TOPIC, header, b"\xc1\xc1\xc1"],                # undecodable body
        [TOPIC, header],                                 # missing frame
        [TOPIC, header, body[:-3]],                      # truncated body
        encode_stats(TOPIC, delta(7, 0, ok=100)),        # a worker not in the plan
        good,
    ]
    agg = asyncio.run(feed(frames, lambda a: a.bad_messages >= 5 and a.totals.ok >= 7))
    assert agg.bad_messages == 5
    assert agg.totals.ok == 7  # the good one, not the unplanned worker's 100


def forged(base: Delta, indexes: bytes, counts: bytes, ok: int) -> list[bytes]:
    """``base`` re-encoded with its one operation's histogram arrays replaced."""
    wire = base.to_wire()
    op = wire[5][0][0]  # totals -> operations -> the first
    op[1], op[6], op[7] = ok, indexes, counts
    return [TOPIC, HEADER.pack(MAGIC, PROTOCOL_VERSION, Delta.TYPE),
            msgpack.packb(wire, use_bin_type=True)]




def test_a_delta_with_a_bad_histogram_is_dropped_whole_and_counted() -> None:
    base = delta(0, 0, ok=3)
    frames = [
        forged(base, u16([10, MAX_INDEX + 1]), u32([1, 2]), 3),  # a bucket out of range
        forged(base, u16([10, 11]), b"\x03\x00\x00", 3),        # counts of a width of 1.5
        forged(base, u16([10]), u64([MAX_COUNT + 1]), MAX_COUNT + 1),  # a count too large
        forged(base, u16([12, 10]), u32([1, 1]), 3),             # counts that miss the ok
        encode_stats(TOPIC, delta(0, 1, ok=7)),
    ]
    agg = asyncio.run(feed(frames, lambda a: a.bad_messages >= 4 and a.totals.ok >= 7))
    assert agg.bad_messages == 4
    assert agg.totals.ok == 7  # nothing of a bad delta was merged
    assert agg.series.seconds[2].ok == 7 and 1 not in agg.series.seconds
    assert agg.totals.ops["op"].hist.total == 7


def test_duplicate_and_reordered_deltas_are_not_counted_twice() -> None:
    agg = Aggregator(zmq.asyncio.Context.instance(), "127.0.0.1", RUN_ID)
    agg.expect("a", 0)
    for seq in (0, 1, 1, 0, 2):
        agg.handle(encode_stats(TOPIC, delta(0, seq, ok=1)))
    assert agg.totals.ok == 3
    assert agg.missed_deltas == 0


def test_current_rps_uses_complete_seconds_of_the_last_five_seconds() -> None:
    agg = Aggregator(zmq.asyncio.Context.instance(), "127.0.0.1", RUN_ID)
    agg.expect("a", 0)
    for k in range(1, 11):  # second k: 100 * k successes
        agg.handle(encode_stats(TOPIC, delta(0, k - 1, ok=100 * k, second=k)))
    assert agg.latest_second == 10
    # through second 9, the last five: (500+...+900) / 5
    assert agg.current_rps(9) == (700, 5)
    assert agg.current_rps(10) == (800, 5)
    assert agg.current_rps(2) == (150, 2)  # only two complete seconds so far, and it says so
    assert agg.current_rps(0) == (0, 0)
    assert agg.current_rps(9, agent="a") == (700, 5)


# -- the generator's CPU, loop lag and saturation ------------------------------------------

HOT_CPU = (0.95, 0.0)  # (cpu seconds, loop lag) of one second: over a core's 90%
HOT_LAG = (0.2, 0.035)  # a loop 35 ms late
COOL = (0.5, 0.005)


def seconds(*figures: tuple[float, float], clients: int = 3) -> tuple[Aggregator, WorkerLive]:
    """An aggregator fed one delta a second, from second 1, with these (cpu, lag)."""
    agg = Aggregator(zmq.asyncio.Context.instance(), "127.0.0.1", RUN_ID)
    agg.expect("a", 0)
    for k, (cpu, lag) in enumerate(figures):
        agg.handle(encode_stats(TOPIC, delta(0, k, ok=10, cpu=cpu, lag=lag, clients=clients)))
    return agg, agg.workers[("a", 0)]


def test_the_thresholds_are_those_of_the_design() -> None:
    assert (SATURATION_CPU, SATURATION_LAG, SATURATION_SECONDS) == (0.9, 0.020, 3)


@pytest.mark.parametrize("hot", [HOT_CPU, HOT_LAG], ids=["cpu alone", "lag alone"])
def test_three_hot_seconds_in_a_row_saturate_a_worker(hot: tuple[float, float]) -> None:
    agg, w = seconds(COOL, hot, hot)
    assert (w.saturated_from, agg.saturated("a")) == (0, False)
    agg.handle(encode_stats(TOPIC, delta(0, 3, ok=1, cpu=hot[0], lag=hot[1])))
    assert (w.saturated_from, agg.saturated("a")) == (2, True)  # the streak began in second 2


def test_two_hot_seconds_then_a_normal_one_do_not_saturate() -> None:
    agg, w = seconds(HOT_CPU, HOT_LAG, COOL, HOT_CPU, HOT_LAG, COOL, HOT_LAG)
    assert w.saturated_from == 0 and not agg.saturated("a")
    assert w.hot_seconds == 1


def test_a_configured_rule_judges_by_its_own_figures() -> None:
    """generator: {max_cpu: 50%, max_loop_lag: 100ms, for: 1s}: one second over half a
    core saturates; a 35 ms lag does not."""
    agg = Aggregator(zmq.asyncio.Context.instance(), "127.0.0.1", RUN_ID,
                     saturation=GeneratorRule(0.5, 0.1, 1, True))
    agg.expect("a", 0)
    agg.expect("a", 1)
    for k, (cpu, lag) in enumerate([HOT_LAG, HOT_LAG, (0.6, 0.0)]):
        agg.handle(encode_stats(TOPIC, delta(0, k, ok=10, cpu=cpu, lag=lag, clients=3)))
    agg.handle(encode_stats(TOPIC, delta(1, 0, ok=10, cpu=0.45, lag=0.09, clients=3)))
    assert agg.workers[("a", 0)].saturated_from == 3
    assert agg.workers[("a", 1)].saturated_from == 0


def test_the_thresholds_themselves_are_not_hot() -> None:
    _, w = seconds(*[(SATURATION_CPU, SATURATION_LAG)] * 5)
    assert w.saturated_from == 0 and w.hot_seconds == 0


def test_a_cpu_and_a_lag_second_count_in_the_same_streak() -> None:
    _, w = seconds(HOT_CPU, HOT_LAG, HOT_CPU)
    assert w.saturated_from == 1


def test_lost_deltas_start_the_streak_again() -> None:
    agg, w = seconds(HOT_CPU, HOT_CPU)
    # seq 2 (second 3) is lost: seconds 2 and 4 are not known to be in a row
    agg.handle(encode_stats(TOPIC, delta(0, 3, ok=1, cpu=0.95)))
    assert w.saturated_from == 0 and w.hot_seconds == 1 and agg.missed_deltas == 1
    agg.handle(encode_stats(TOPIC, delta(0, 4, ok=1, cpu=0.95)))
    agg.handle(encode_stats(TOPIC, delta(0, 5, ok=1, cpu=0.95)))
    assert w.saturated_from == 4


def test_saturation_is_sticky_and_keeps_the_first_streak() -> None:
    agg, w = seconds(COOL, HOT_LAG, HOT_LAG, HOT_LAG, COOL, COOL, HOT_CPU, HOT_CPU, HOT_CPU)
    assert w.saturated_from == 2
    assert agg.saturated("a")


def test_seconds_without_clients_are_not_the_loads_figures() -> None:
    # a blocking shutdown() after the stop: hot, but no client runs any more
    agg, w = seconds(HOT_CPU, HOT_CPU, (0.99, 0.5), (0.99, 0.5), (0.99, 0.5), clients=0)
    assert w.saturated_from == 0 and w.cpu is None and w.loop_lag == 0.0
    assert agg.generator_load(5, "a") == (None, None)
    agg2, w2 = seconds(HOT_CPU, HOT_CPU)
    agg2.handle(encode_stats(TOPIC, delta(0, 2, ok=0, cpu=0.0, lag=0.0, clients=0)))
    agg2.handle(encode_stats(TOPIC, delta(0, 3, ok=1, cpu=0.95)))
    assert w2.saturated_from == 0  # the second without clients broke the streak
    assert w2.cpu == pytest.approx((0.95 * 3) / 3)


def test_a_late_delta_covers_the_seconds_the_worker_skipped() -> None:
    """A loop blocked 3.5 s publishes second 1 late, then second 4: the delta of second 1
    covered seconds 1-3, so its CPU is spread over them and they count in the streak."""
    agg, w = seconds((3.5, 3.5))
    assert w.saturated_from == 0 and w.hot_seconds == 1
    assert agg.generator_load(1, "a") == (3.5, 3.5)  # until the next delta says otherwise
    agg.handle(encode_stats(TOPIC, delta(0, 1, ok=1, second=4, cpu=0.5, lag=0.0)))
    assert w.saturated_from == 1  # seconds 1, 2, 3 were hot
    assert w.hot_seconds == 0  # second 4 was not
    assert (w.cpu_seconds, w.cpu_span) == (4.0, 4)
    assert agg.generator_load(4, "a") == (1.0, 3.5)
    assert agg.generator_load(1, "a") == (3.5 / 3, 3.5)


def test_cpu_share_and_worst_lag_per_worker_and_per_agent_window() -> None:
    agg = Aggregator(zmq.asyncio.Context.instance(), "127.0.0.1", RUN_ID)
    agg.expect("a", 0)
    agg.expect("a", 1)
    agg.expect("b", 2)
    for k in range(1, 8):  # worker 0: 10% of a core, worker 1: 30%; lag k ms
        agg.handle(encode_stats(TOPIC, delta(0, k - 1, ok=1, cpu=0.1, lag=k / 1000)))
        agg.handle(encode_stats(TOPIC, delta(1, k - 1, ok=1, cpu=0.3, lag=k / 2000)))
    w0, w1 = agg.workers[("a", 0)], agg.workers[("a", 1)]
    assert w0.cpu == pytest.approx(0.1) and w1.cpu == pytest.approx(0.3)
    assert (w0.loop_lag, w1.loop_lag) == (0.007, 0.0035)
    # the window of current rps: seconds 3-7 of both workers
    cpu, lag = agg.generator_load(7, "a")
    assert cpu == pytest.approx(0.2) and lag == 0.007
    assert agg.current_rps(7, "a") == (2, 5)
    cpu, lag = agg.generator_load(2, "a")  # seconds 1-2 only
    assert cpu == pytest.approx(0.2) and lag == 0.002
    assert agg.generator_load(7, "b") == (None, None)  # no delta from agent b
    assert not agg.saturated("a") and not agg.saturated("b")


def test_a_delta_far_ahead_of_the_runs_clock_is_dropped() -> None:
    """Once the run started, a delta for a second the run cannot have reached (a forged
    or broken peer) is dropped and counted, so it cannot stretch the series."""
    frames = [encode_stats(TOPIC, delta(0, 0, ok=5, second=10_000)),
              encode_stats(TOPIC, delta(0, 1, ok=7, second=1))]

    agg = asyncio.run(feed(frames, lambda a: a.bad_messages >= 1 and a.totals.ok >= 7,
                           t0=time.time()))
    assert agg.bad_messages == 1 and agg.totals.ok == 7
    assert 10_000 not in agg.series.seconds and agg.latest_second == 1


def test_an_implausible_delta_is_dropped_and_counted_and_the_real_ones_go_on() -> None:
    """A forged delta far ahead in sequence would make every real delta look old, and
    one with a trillion calls would own the live figures: both are dropped, counted."""
    huge = Totals()
    huge.op("op").hist.record(1_000_000, 10**12)
    huge.op("op").ok = 10**12
    forged_far = delta(0, 10**9, ok=3, second=1)
    forged_big = Delta(agent="a", worker=1, seq=0, second=1, clients=3, totals=huge,
                       cpu_seconds=0.5, loop_lag=0.0)
    frames = [encode_stats(TOPIC, forged_far), encode_stats(TOPIC, forged_big),
              encode_stats(TOPIC, delta(0, 0, ok=5)), encode_stats(TOPIC, delta(0, 1, ok=7)),
              encode_stats(TOPIC, delta(1, 0, ok=2))]

    agg = asyncio.run(feed(frames, lambda a: a.totals.ok >= 14, t0=time.time()))
    assert agg.implausible == 2
    assert agg.totals.ok == 14 and agg.missed_deltas == 0
    assert agg.workers[("a", 0)].next_seq == 2  # the real sequence went on


def test_deltas_no_worker_sends_are_dropped_and_memory_stays_bounded() -> None:
    """A thousand and one names (each costs a histogram a second), an absurd loop lag or
    client count: dropped, counted; a Hello from a worker outside the plan is not kept."""
    many = Totals()
    for i in range(1001):
        many.op(f"name-{i}").fail = 1
    lag = delta(1, 0, ok=1, lag=1e308)
    crowd = delta(1, 1, ok=1, clients=2**62)
    names = Delta(agent="a", worker=1, seq=2, second=1, clients=3, totals=many,
                  cpu_seconds=0.5, loop_lag=0.0)
    frames = [encode_stats(TOPIC, lag), encode_stats(TOPIC, crowd),
              encode_stats(TOPIC, names),
              *(encode_stats(TOPIC, Hello(agent=f"stranger-{i}", worker=i)) for i in range(50)),
              encode_stats(TOPIC, delta(1, 3, ok=4))]

    agg = asyncio.run(feed(frames, lambda a: a.totals.ok >= 4, t0=time.time()))
    assert agg.implausible == 3
    assert agg.missed_deltas == 0  # dropped, not also counted as lost
    assert agg.totals.ok == 4 and list(agg.totals.ops) == ["op"]
    assert agg.hellos == {("a", 0)}  # the feed's own, planned


def mixed_frames() -> list[list[bytes]]:
    """Deltas of two agents' workers, two names, several seconds and one late, with a
    duplicate, an unplanned worker, a bad body and a HELLO among them."""
    rng = random.Random(11)
    frames = []
    for seq in range(4):
        for agent, worker in (("a", 0), ("a", 1), ("b", 0)):
            t = Totals()
            for name in ("GET", "POST")[:1 + (worker + seq) % 2]:
                st = t.op(name)
                for _ in range(rng.randint(0, 200)):
                    st.record_ok(int(rng.lognormvariate(14 + worker, 1)))
                st.fail = rng.randint(0, 2)
                st.statuses = {200: st.ok} if st.ok else {}
                for _ in range(st.fail):
                    t.add_error((name, "E", f"m{worker}"), 1)
            second = 1 if (agent, worker, seq) == ("b", 0, 3) else seq + 1  # one late
            frames.append(encode_stats(TOPIC, Delta(
                agent=agent, worker=worker, seq=seq, second=second, clients=2, totals=t,
                cpu_seconds=0.3, loop_lag=0.001)))
    frames.insert(4, frames[1])  # a duplicate
    frames.insert(6, encode_stats(TOPIC, delta(7, 0, ok=50)))  # not in the plan
    frames.insert(8, [TOPIC, frames[0][1], b"\xc1"])  # undecodable
    frames.insert(9, encode_stats(TOPIC, Hello(agent="a", worker=1)))
    return frames


def planned() -> Aggregator:
    agg = Aggregator(zmq.asyncio.Context.instance(), "127.0.0.1", RUN_ID)
    for agent, worker in (("a", 0), ("a", 1), ("b", 0)):
        agg.expect(agent, worker)
    return agg


def figures(agg: Aggregator) -> Any:
    """Everything the aggregator merged, histograms as dicts."""
    def ops(t: Totals) -> Any:
        return ({n: (st.ok, st.fail, st.sum_ns, st.min_ns, st.max_ns, st.statuses,
                     st.hist.counts) for n, st in t.ops.items()}, t.errors)
    seconds = {k: (s.ok, s.fail, s.clients, {n: (ns.ok, ns.fail, ns.hist.counts)
                                              for n, ns in s.names.items()},
                   {a: (x.ok, x.fail, x.cpu_span) for a, x in s.agents.items()})
               for k, s in agg.series.seconds.items()}
    workers = {k: (ops(w.totals()), w.next_seq, w.missed) for k, w in agg.workers.items()}
    return ops(agg.totals), seconds, workers, agg.bad_messages, agg.hellos


def test_a_batch_merges_as_its_deltas_one_by_one() -> None:
    """The batch path (histograms added with one vector add per target) gives exactly
    what feeding the same messages one at a time gives."""
    frames = mixed_frames()
    one_by_one = planned()
    for f in frames:
        one_by_one.handle(f)
    batched = planned()
    batched.handle_batch(frames[:7])
    batched.handle_batch(frames[7:])
    assert figures(batched) == figures(one_by_one)
    assert batched.bad_messages == 1 and ("a", 1) in batched.hellos
    assert batched.totals.ok == sum(w.counts.ok for w in batched.workers.values())
    assert sum(s.ok for s in batched.series.seconds.values()) == batched.totals.ok


def open_delta(worker: int, seq: int, ok: int, late: int, dropped: int) -> Delta:
    d = delta(worker, seq, ok)
    st = d.totals.op("op")
    sched = st.schedule()
    for i in range(ok):
        sched.service.record(900_000 + i)
        sched.lag.record(100_000)
    sched.late, sched.dropped = late, dropped
    return d


def test_open_model_figures_merge_into_the_totals_and_each_second() -> None:
    frames = [encode_stats(TOPIC, open_delta(w, s, ok=4, late=1, dropped=2))
              for w in (0, 1) for s in (0, 1)]
    # a closed-model name beside it in the same batch keeps its own shape
    frames.append(encode_stats(TOPIC, delta(0, 2, ok=3)))
    agg = asyncio.run(feed(frames, lambda a: "op" in a.totals.ops and a.totals.ops["op"].ok == 19))
    st = agg.totals.ops["op"]
    assert (st.late, st.dropped) == (4, 8)
    assert st.sched is not None
    assert st.sched.service.total == st.sched.lag.total == 16  # the open deltas' successes
    assert st.sched.lag.counts == {bucket_index(100_000): 16}
    for second in (1, 2):
        ns = agg.series.seconds[second].names["op"]
        assert (ns.ok, ns.late, ns.dropped) == (8, 2, 4)
        assert ns.service is not None and ns.service.total == 8
        assert agg.series.seconds[second].dropped == 4
    merged = agg.recent(2)
    assert (merged.late, merged.dropped) == (4, 8)
    assert merged.lag is not None and merged.lag.total == 16
    # a worker's own figures (a lost worker's estimate): counts and the corrected
    # latency, not its service times and lags
    mine = agg.workers[("a", 1)].totals().ops["op"]
    assert (mine.ok, mine.late, mine.dropped) == (8, 2, 4)
    assert mine.hist.total == 8
    assert mine.sched is not None and mine.sched.service.total == 0


def test_the_collector_runs_rarely_while_serving_and_is_set_back_after() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    seen = []

    def done(agg: Aggregator) -> bool:
        seen.append(gc.get_threshold()[0])
        return agg.totals.ok == 3

    asyncio.run(feed([encode_stats(TOPIC, delta(0, 0, ok=3))], done))
    assert seen and set(seen) == {GC_YOUNG}
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
