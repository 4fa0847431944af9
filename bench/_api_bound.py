"""The API's bound: the least any client written against this project's API costs.

    python bench/_api_bound.py URL USERS DURATION DATA_FILE

A user's call is `await client.execute()`, an `async def` that awaits
`HttpClient.request()`, itself an `async def` (so that `asyncio.create_task` takes it)
that returns a response object once the whole response has arrived. Whatever does the
work, a call in a worker then costs at least: a task per client; two coroutines a call
(execute's, request's); a future a request, resolved from the protocol's callbacks and
waking the task through the event loop; httptools' parse with the callbacks that give
the status, the body and the end (`on_headers_complete`, `on_body`,
`on_message_complete`); a response object; the call timed and recorded in a histogram
(as the worker's call loop records: `Histogram.rows`). This script pays exactly that,
and nothing else: no scheduler, no counting of statuses or bytes, no read timeout, no
reconnecting, no check of any kind. Against the ceiling (`_ceiling.py`, the same
request bytes from bare protocols: no task, no future, no coroutine), it shows what
the API itself costs; against variant a, what our implementation costs on top of it.

USERS connections are made first; then `started` is printed and the calls begin. After
DURATION seconds no new call starts, the ones in flight finish, and one JSON line is
printed, as `_ceiling.py` does: `{"responses": N, "errors": E, "elapsed": S}`, N the
200s, E every other status, S from the start to the end of the last call, and
`"recorded"`, the histogram's total (equal to N + E).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _ceiling import request_bytes

from protocol.histogram import Histogram


class Response:
    __slots__ = ("body", "head", "status")

    status: int
    head: bytes | None
    body: bytes


class Connection(asyncio.Protocol):
    """One keep-alive connection, parsed by httptools; one request in flight."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.status = 0
        self.head: bytes | None = None
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            self.head = data
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body = body

    def on_message_complete(self) -> None:
        waiter = self.waiter
        assert waiter is not None
        self.waiter = None
        response = Response()
        response.status, response.head, response.body = self.status, self.head, self.body
        self.head, self.body = None, b""
        waiter.set_result(response)


class Client:
    """What `HttpClient` must at least be: a request is an `async def`."""

    def __init__(self, conn: Connection, request: bytes) -> None:
        self.conn = conn
        self.request_bytes = request

    async def request(self, method: str, body: bytes | None = None) -> Response:
        conn = self.conn
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        conn.waiter = waiter
        assert conn.transport is not None
        conn.transport.write(self.request_bytes)
        return await waiter


class User:
    """What `examples/http_fast.py` is: execute() awaits one request, checks its status."""

    def __init__(self, client: Client, body: bytes) -> None:
        self.client = client
        self.body = body
        self.errors = 0

    async def execute(self) -> None:
        response = await self.client.request("POST", body=self.body)
        if not 200 <= response.status < 300:
            self.errors += 1


class Run:
    __slots__ = ("calls", "last_end", "running")

    def __init__(self) -> None:
        self.running = True
        self.calls = 0
        self.last_end = 0


async def calls(user: User, run: Run, hist: Histogram) -> None:
    clock = time.perf_counter_ns
    rows = hist.rows()  # the worker's call loops' tally, the cheapest way we record
    t0 = clock()
    n = 0
    while run.running:
        await user.execute()
        t1 = clock()
        dt = t1 - t0
        s = dt.bit_length() - 8
        if s > 0:
            rows[s][dt >> s] += 1
        else:
            rows[0][dt] += 1
        t0 = t1
        n += 1
    run.calls += n
    run.last_end = max(run.last_end, t0)


async def main(url: str, users: int, duration: float, data_file: str) -> None:
    body = Path(data_file).read_bytes()
    request = request_bytes(url, body)
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"{url}: no host")
    loop = asyncio.get_running_loop()
    people = []
    for _ in range(users):
        _, conn = await loop.create_connection(Connection, parts.hostname, parts.port or 80)
        people.append(User(Client(conn, request), body))
    run, hist = Run(), Histogram()
    print("started", flush=True)
    start = time.perf_counter_ns()
    tasks = [loop.create_task(calls(user, run, hist)) for user in people]
    await asyncio.sleep(duration)
    run.running = False
    await asyncio.gather(*tasks)
    for user in people:
        assert user.client.conn.transport is not None
        user.client.conn.transport.close()
    errors = sum(user.errors for user in people)
    print(json.dumps({"responses": run.calls - errors, "errors": errors,
                      "elapsed": (run.last_end - start) / 1e9,
                      "recorded": sum(hist.counts.values())}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(f"usage: {sys.argv[0]} URL USERS DURATION DATA_FILE")
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
