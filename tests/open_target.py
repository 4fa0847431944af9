"""A target for the open model's tests: it stamps when each request arrived, and can
freeze for one window as a stalled server does.

    python tests/open_target.py --port P [--stall-at S --stall-for D]

/test answers 200 "ok". With --stall-at, every request that arrives from S seconds after
the first request until D seconds later is held until that window ends: the server is
frozen for D seconds. GET /__times returns {"arrivals": [ns, ...]} (time.monotonic_ns()
of each /test request's arrival, in order) and {"stalled": N}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web


def make_app(stall_at: float | None, stall_for: float) -> web.Application:
    arrivals: list[int] = []
    stalled = [0]

    async def test(request: web.Request) -> web.Response:
        now = time.monotonic_ns()
        arrivals.append(now)
        await request.read()
        if stall_at is not None:
            begin = arrivals[0] + int(stall_at * 1e9)
            end = begin + int(stall_for * 1e9)
            if begin <= now < end:
                stalled[0] += 1
                await asyncio.sleep((end - now) / 1e9)
        return web.Response(text="ok")

    async def times(request: web.Request) -> web.Response:
        body = {"arrivals": arrivals, "stalled": stalled[0]}
        return web.Response(text=json.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/test", test)
    app.router.add_get("/__times", times)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stall-at", type=float, default=None)
    p.add_argument("--stall-for", type=float, default=1.0)
    a = p.parse_args()
    web.run_app(make_app(a.stall_at, a.stall_for), host="127.0.0.1", port=a.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
