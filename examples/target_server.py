"""A small target for trying the load tester: answers POST /test as the seed's example expects.

    python examples/target_server.py --port 6301 [--fail-every K] [--delay-ms N]

POST (or GET) /test answers 200 "ok" after reading the body; with --fail-every K every
K-th request gets a 500. GET /__count returns {"ok": N, "fail": M}. Needs aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web


def make_app(fail_every: int = 0, delay_ms: float = 0.0) -> web.Application:
    counts = {"ok": 0, "fail": 0}

    async def test(request: web.Request) -> web.Response:
        await request.read()
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        n = counts["ok"] + counts["fail"] + 1
        if fail_every and n % fail_every == 0:
            counts["fail"] += 1
            return web.Response(status=500, text="fail")
        counts["ok"] += 1
        return web.Response(text="ok")

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(counts), content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/test", test)
    app.router.add_get("/__count", count)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6301)
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--delay-ms", type=float, default=0.0)
    a = p.parse_args()
    print(f"target server on http://{a.host}:{a.port}/test", flush=True)
    web.run_app(make_app(a.fail_every, a.delay_ms), host=a.host, port=a.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
