"""Micro-benchmark: requests/s of protocol.http.HttpClient on one core.

Workload: --clients clients (default 50), each one HttpClient with one
keep-alive connection doing `await client.get("/")` in a loop, all in this
process on uvloop, pinned to CPU 1. After --warmup seconds (default 1), the
requests completed in the next --duration seconds (default 5) are counted
and requests/s printed.

Target: nginx if on PATH (1 worker pinned to CPU 0 with taskset, access_log
off, `return 200 "ok"`, unlimited keep-alive requests), its config, pid,
logs and temp paths in a temporary directory removed on exit (bench/_target.py).
Without nginx: bench/_counting_target.py (uvloop + httptools) in a subprocess
pinned to CPU 0, which is slower than nginx, so the figure then measures the
server as much as the client.

    python bench/http_client_micro.py [--clients 50] [--duration 5]
        [--loop uvloop|asyncio] [--client ours|aiohttp] [--no-nginx]

`--client aiohttp` runs the same workload with one aiohttp session, for
comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _target import CLIENT_CPU, SERVER_CPU, target_server

from protocol.http import HttpClient


async def load(
    port: int, clients: int, warmup: float, duration: float, kind: str
) -> tuple[int, int]:
    """Run the workload; return (requests, errors) counted during `duration`."""
    url = f"http://127.0.0.1:{port}/"
    counts = [0, 0]  # requests, errors
    stop = False

    async def loop_requests(get: Callable[[], Awaitable[int]]) -> None:
        while not stop:
            if await get() == 200:
                counts[0] += 1
            else:
                counts[1] += 1

    async def ours() -> None:
        async with HttpClient(url) as client:

            async def get() -> int:
                return (await client.get()).status

            await loop_requests(get)

    tasks: list[asyncio.Task[None]]
    session = None
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def aiohttp_get() -> int:
            assert session is not None
            async with session.get(url) as resp:
                await resp.read()
                return resp.status

        tasks = [asyncio.create_task(loop_requests(aiohttp_get)) for _ in range(clients)]
    else:
        tasks = [asyncio.create_task(ours()) for _ in range(clients)]
    try:
        await asyncio.sleep(warmup)
        start = counts.copy()
        await asyncio.sleep(duration)
        end = counts.copy()
        stop = True
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        if session is not None:
            await session.close()
    return end[0] - start[0], end[1] - start[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--client", choices=["ours", "aiohttp"], default="ours")
    parser.add_argument("--no-nginx", action="store_true", help="use the fallback server")
    args = parser.parse_args()

    def on_term(signum: int, frame: FrameType | None) -> None:
        signal.raise_signal(signal.SIGINT)  # the same cleanup as Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    with target_server(not args.no_nginx) as target:
        port, what = target.port, target.description
        if (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {CLIENT_CPU})
        factory = uvloop.new_event_loop if args.loop == "uvloop" else asyncio.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            requests, errors = runner.run(
                load(port, args.clients, args.warmup, args.duration, args.client)
            )
    client = "protocol.http.HttpClient" if args.client == "ours" else "aiohttp.ClientSession"
    print(f"target:   {what}, CPU {SERVER_CPU}")
    print(f"client:   {client}, {args.clients} clients, {args.loop}, CPU {CLIENT_CPU}")
    print(f"workload: GET / in a loop, {args.duration:g} s after {args.warmup:g} s warm-up")
    rate = requests / args.duration
    print(f"result:   {rate:,.0f} requests/s ({requests:,} requests, {errors} errors)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
