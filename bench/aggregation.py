"""How much of a core the master's stats aggregation needs for many workers.

Simulated workers publish realistic deltas (one operation, a latency histogram of
~100 buckets, a few errors) once a second, each on its own PUB socket, from a few
publisher processes; the master's real `Aggregator` (SUB socket, decode, validate,
merge per worker, per second and in total) runs in this process on asyncio, as in
`loadmaster run`. Printed: deltas received, deltas lost, and this process's CPU time
over the measured window as a share of one core.

    python bench/aggregation.py [--workers 1000] [--seconds 20] [--publishers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq
import zmq.asyncio

from loadmaster.aggregator import Aggregator
from protocol.stats import Totals
from protocol.wire.codec import encode_stats
from protocol.wire.messages import Delta

RUN_ID = "bench0aggregate0"


def realistic_delta(rng: random.Random, agent: str, worker: int, seq: int) -> Delta:
    totals = Totals()
    st = totals.op("HttpClient")
    for _ in range(rng.randint(2000, 4000)):  # ~3,000 calls/s per worker
        st.record_ok(int(rng.lognormvariate(13.5, 0.6)))  # ~0.7 ms median
    st.fail = rng.randint(0, 3)
    for _ in range(st.fail):
        totals.add_error(("HttpClient", "ValueError",
                          "response with err http status code:500"))
    return Delta(agent=agent, worker=worker, seq=seq, second=seq + 1, clients=50,
                 totals=totals, cpu_seconds=0.9, loop_lag=0.001)


def publisher(endpoint: str, first: int, count: int, seconds: float, start_at: float) -> None:
    """``count`` simulated workers, each with its own PUB socket, one delta a second."""
    rng = random.Random(first)
    ctx = zmq.Context()
    socks = []
    for _ in range(count):
        s = ctx.socket(zmq.PUB)
        s.linger = 1000
        s.connect(endpoint)
        socks.append(s)
    # a few distinct payloads per publisher, re-sent with each worker's own seq number
    samples = [realistic_delta(rng, "bench", 0, 0) for _ in range(8)]
    topic = RUN_ID.encode()
    time.sleep(max(0.0, start_at - time.time()))
    seq = 0
    while time.time() < start_at + seconds:
        tick = start_at + seq + 1
        for i, s in enumerate(socks):
            sample = samples[(i + seq) % len(samples)]
            d = Delta(agent="bench", worker=first + i, seq=seq, second=seq + 1,
                      clients=50, totals=sample.totals, cpu_seconds=0.9, loop_lag=0.001)
            s.send_multipart(encode_stats(topic, d))
        seq += 1
        time.sleep(max(0.0, tick - time.time()))
    for s in socks:
        s.close()
    ctx.term()


async def measure(workers: int, seconds: float, publishers: int) -> None:
    ctx = zmq.asyncio.Context()
    agg = Aggregator(ctx, "127.0.0.1", RUN_ID)
    port = agg.bind()
    for w in range(workers):
        agg.expect("bench", w)
    serve = asyncio.get_running_loop().create_task(agg.serve())
    start_at = time.time() + 3.0  # time for every PUB to connect and subscribe
    per = -(-workers // publishers)
    mp = multiprocessing.get_context("spawn")
    procs = []
    for p in range(publishers):
        first = p * per
        n = min(per, workers - first)
        if n <= 0:
            break
        proc = mp.Process(target=publisher, args=(f"tcp://127.0.0.1:{port}", first, n,
                                                  seconds, start_at))
        proc.start()
        procs.append(proc)
    await asyncio.sleep(max(0.0, start_at - time.time()) + 1.0)  # skip the first second
    cpu0, wall0 = time.process_time(), time.monotonic()
    got0 = sum(w.next_seq for w in agg.workers.values())
    await asyncio.sleep(seconds - 2.0)
    cpu1, wall1 = time.process_time(), time.monotonic()
    got1 = sum(w.next_seq for w in agg.workers.values())
    for proc in procs:
        proc.join(30)
    await asyncio.sleep(0.5)
    serve.cancel()
    await asyncio.gather(serve, return_exceptions=True)
    agg.close()
    ctx.term()
    rate = (got1 - got0) / (wall1 - wall0)
    share = (cpu1 - cpu0) / (wall1 - wall0)
    sample = realistic_delta(random.Random(1), "bench", 0, 0)
    size = len(encode_stats(RUN_ID.encode(), sample)[2])
    buckets = len(sample.totals.ops["HttpClient"].hist.counts)
    print(f"workers simulated        : {workers} (one PUB socket each, {publishers} processes)")
    print(f"delta body size          : ~{size} bytes (1 operation, {buckets} histogram buckets)")
    print(f"deltas received          : {rate:.0f}/s over {wall1 - wall0:.1f}s")
    print(f"deltas lost (seq gaps)   : {agg.missed_deltas}")
    print(f"master CPU (aggregation) : {100 * share:.1f}% of one core "
          f"({1e6 * (cpu1 - cpu0) / max(1, got1 - got0):.0f} us per delta)")
    print(f"calls represented        : {agg.totals.ok:,}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--publishers", type=int, default=max(1, (os.cpu_count() or 2) * 2))
    a = p.parse_args()
    asyncio.run(measure(a.workers, a.seconds, a.publishers))


if __name__ == "__main__":
    main()
