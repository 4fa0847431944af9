"""Micro-benchmark: requests/s of protocol.http.HttpClient on one core.

Workload: --clients clients (default 50), each one HttpClient with one
keep-alive connection doing `await client.get("/")` in a loop, all in this
process on uvloop, pinned to CPU 1. After --warmup seconds (default 1), the
requests completed in the next --duration seconds (default 5) are counted
and requests/s printed.

Target: nginx if on PATH (1 worker pinned to CPU 0 with taskset, access_log
off, `return 200 "ok"`, unlimited keep-alive requests), its config, pid,
logs and temp paths in a temporary directory removed on exit. Without nginx:
a minimal plain-asyncio server in a subprocess pinned to CPU 0, which is
slower than nginx, so the figure then measures the server as much as the
client.

    python bench/http_client_micro.py [--clients 50] [--duration 5]
        [--loop uvloop|asyncio] [--client ours|aiohttp] [--no-nginx]

`--client aiohttp` runs the same workload with one aiohttp session, for
comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol.http import HttpClient

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok"; }}
    }}
}}
"""

SERVER_CPU, CLIENT_CPU = 0, 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(command: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    if taskset and (os.cpu_count() or 1) > 1:
        return [taskset, "-c", str(SERVER_CPU), *command]
    return command


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the target server exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # nothing to wait on but the port itself
    raise RuntimeError(f"the target server is not listening on port {port} after {timeout} s")


@contextmanager
def target_server(use_nginx: bool) -> Iterator[tuple[int, str]]:
    """Start nginx (or the fallback server); yield (port, description)."""
    port = free_port()
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    nginx = shutil.which("nginx", path=path) if use_nginx else None
    tmp = Path(tempfile.mkdtemp(prefix="http-bench-"))
    try:
        if nginx:
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
            command = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
            what = 'nginx, 1 worker, return 200 "ok"'
        else:
            command = [sys.executable, __file__, "--serve", str(port)]
            what = "fallback plain-asyncio server"
        process = subprocess.Popen(pinned(command), start_new_session=True)
        try:
            wait_listening(port, process)
            yield port, what
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # nginx: fast shutdown
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def serve(port: int) -> None:
    """The fallback target: answers every request head with a fixed response."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            count = self.buffer.count(b"\r\n\r\n")
            if count:
                self.buffer = self.buffer.rpartition(b"\r\n\r\n")[2]
                self.transport.write(reply * count)  # type: ignore[attr-defined]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--client", choices=["ours", "aiohttp"], default="ours")
    parser.add_argument("--no-nginx", action="store_true", help="use the fallback server")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        signal.raise_signal(signal.SIGINT)  # the same cleanup as Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    with target_server(not args.no_nginx) as (port, what):
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
