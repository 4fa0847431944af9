"""The master's stats aggregation, fed over a real PUB/SUB pair."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import zmq
import zmq.asyncio

from loadmaster.aggregator import Aggregator
from protocol.stats import Totals
from protocol.wire.codec import HEADER, MAGIC, encode_stats
from protocol.wire.messages import Delta, Hello

RUN_ID = "0123456789abcdef"
TOPIC = RUN_ID.encode()


def delta(worker: int, seq: int, ok: int, second: int | None = None,
          agent: str = "a") -> Delta:
    t = Totals()
    st = t.op("op")
    for i in range(ok):
        st.record_ok(1_000_000 + i)
    return Delta(agent=agent, worker=worker, seq=seq, second=seq + 1 if second is None
                 else second, clients=3, totals=t, cpu_seconds=0.5, loop_lag=0.0)


async def feed(frames: list[list[bytes]], until: Callable[[Aggregator], bool]) -> Aggregator:
    """Publish ``frames`` on a real PUB socket into an Aggregator until ``until(agg)``."""
    ctx = zmq.asyncio.Context()
    agg = Aggregator(ctx, "127.0.0.1", RUN_ID)
    port = agg.bind()
    agg.expect("a", 0)
    agg.expect("a", 1)
    serve = asyncio.get_running_loop().create_task(agg.serve())
    pub = zmq.Context.instance().socket(zmq.PUB)
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
