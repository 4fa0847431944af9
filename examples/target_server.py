"""A small target for trying the load tester: answers POST /test as the seed's example expects.

    python examples/target_server.py --port 6301 [--fail-every K] [--delay-ms N]

POST (or GET) /test, and any path below it, answers 200 "ok" after reading the body;
with --fail-every K every K-th request gets a 500. GET /__count returns
{"ok": N, "fail": M, "by_path": {...}, "by_peer": {...}}: answers in all, per request
path and per client address; on exit it prints "target server answered ok=N fail=M".
Needs aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter

from aiohttp import web


def make_app(fail_every: int = 0, delay_ms: float = 0.0) -> web.Application:
    counts = {"ok": 0, "fail": 0}
    by_path: Counter[str] = Counter()
    by_peer: Counter[str] = Counter()

    async def test(request: web.Request) -> web.Response:
        await request.read()
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        by_path[request.path] += 1
        by_peer[request.remote or "?"] += 1
        n = counts["ok"] + counts["fail"] + 1
        if fail_every and n % fail_every == 0:
            counts["fail"] += 1
            return web.Response(status=500, text="fail")
        counts["ok"] += 1
        return web.Response(text="ok")

    async def count(request: web.Request) -> web.Response:
        body = {**counts, "by_path": by_path, "by_peer": by_peer}
        return web.Response(text=json.dumps(body), content_type="application/json")

    async def report(app: web.Application) -> None:
        # on exit (Ctrl-C, SIGTERM): what it answered, for whoever reads its output
        print(f"target server answered ok={counts['ok']} fail={counts['fail']}", flush=True)

    app = web.Application()
    app.router.add_route("*", "/test{tail:(/.*)?}", test)
    app.router.add_get("/__count", count)
    app.on_cleanup.append(report)
    return app


def main() -> None:
    p = argparse.ArgumentParser(
        description="A small target for trying the load tester. POST (or GET) /test, and any "
                    "path below it, answers 200 \"ok\" after reading the request body.",
        epilog="GET /__count returns what was answered so far, as JSON: "
               "{\"ok\": N, \"fail\": M, \"by_path\": {...}, \"by_peer\": {...}} (answers "
               "in all, per request path and per client address). Needs aiohttp.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=6301, help="TCP port to listen on")
    p.add_argument("--fail-every", type=int, default=0, metavar="K",
                   help="every K-th request to /test answers 500 \"fail\" instead of 200; "
                        "0 = never")
    p.add_argument("--delay-ms", type=float, default=0.0, metavar="MS",
                   help="wait this many milliseconds before answering each /test request")
    a = p.parse_args()
    print(f"target server on http://{a.host}:{a.port}/test", flush=True)
    web.run_app(make_app(a.fail_every, a.delay_ms), host=a.host, port=a.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
