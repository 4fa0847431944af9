"""The no-op baseline: a bare loop of awaits that records each call in a histogram.

    python bench/_noop_loop.py TASKS DURATION [--inline]

On uvloop, TASKS tasks each loop over `await noop()` (an `async def` that returns at
once), timing each call with `time.perf_counter_ns()` before and after and recording
the difference with `Histogram.record` into one `protocol.histogram.Histogram`, the
class a worker's calls are recorded into. With `--inline`, the way the worker's call
loop records instead: one clock read a call (a call's end is the next one's start) and
`bucket_index` inlined into the histogram's counts. Each task yields to the loop every
`YIELD_EVERY` calls (the worker's own constant): a no-op await never suspends, so
without it one task would hold the loop. No load tester around it.

Prints `started` when the tasks start, then one JSON line: `{"calls": N, "elapsed": S,
"recorded": R}`, N the calls made, S from the start to the end of the last, R the
histogram's total (equal to N).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop

from loadagent.scheduler import YIELD_EVERY
from protocol.histogram import SUB_BUCKET_BITS, Histogram


class Run:
    __slots__ = ("calls", "running")

    def __init__(self) -> None:
        self.running = True
        self.calls = 0


async def noop() -> None:
    return None


async def loop_calls(run: Run, hist: Histogram) -> None:
    clock = time.perf_counter_ns
    record = hist.record
    mask = YIELD_EVERY - 1  # a power of two, as in the worker
    sleep = asyncio.sleep
    n = 0
    while run.running:
        t0 = clock()
        await noop()
        record(clock() - t0)
        n += 1
        if n & mask == 0:
            await sleep(0)
    run.calls += n


async def loop_calls_inline(run: Run, hist: Histogram) -> None:
    clock = time.perf_counter_ns
    counts = hist.counts
    mask = YIELD_EVERY - 1
    sleep = asyncio.sleep
    n = 0
    t0 = clock()
    while run.running:
        await noop()
        t1 = clock()
        dt = t1 - t0
        s = dt.bit_length() - 8
        i = dt if s <= 0 else (s << SUB_BUCKET_BITS) + (dt >> s)
        counts[i] = counts.get(i, 0) + 1
        t0 = t1
        n += 1
        if n & mask == 0:
            await sleep(0)
            t0 = clock()
    run.calls += n


async def main(tasks: int, duration: float, inline: bool) -> None:
    run = Run()
    hist = Histogram()
    calls = loop_calls_inline if inline else loop_calls
    print("started", flush=True)
    start = time.perf_counter()
    running = [asyncio.create_task(calls(run, hist)) for _ in range(tasks)]
    await asyncio.sleep(duration)
    run.running = False
    await asyncio.gather(*running)
    elapsed = time.perf_counter() - start
    print(json.dumps({"calls": run.calls, "elapsed": elapsed, "recorded": hist.total}),
          flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[3:] not in ([], ["--inline"]):
        sys.exit(f"usage: {sys.argv[0]} TASKS DURATION [--inline]")
    uvloop.run(main(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:] == ["--inline"]))
