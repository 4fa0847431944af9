"""The ceiling: variant a's request from the barest uvloop client we could write.

    python bench/_ceiling.py URL USERS DURATION DATA_FILE

USERS connections, each an `asyncio.Protocol` with one request in flight. The request
is the bytes `protocol.http.HttpClient` writes for variant a (`POST PATH HTTP/1.1`,
`Host`, `Content-Type: text/plain`, `Content-Length`, the data file as the body), built
once and written again as soon as the previous response has ended. A response's end is
found from its head and `Content-Length` alone (no chunked bodies, no other header
read); nothing is measured but a count of responses, 200s and others.

All connections are made first; then `started` is printed and the requests begin.
After DURATION seconds no new request is sent, the ones in flight finish, and one JSON
line is printed, as `_aiohttp_loop.py` does: `{"responses": N, "errors": E,
"elapsed": S}`, N the 200s, E every other status, S from the start to the end of the
last response.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from urllib.parse import urlsplit

import uvloop

HEAD_END = b"\r\n\r\n"
LENGTH = b"\r\ncontent-length:"
STOP_MARGIN = 30.0  # seconds the calls in flight at the stop may take


class ProtocolError(RuntimeError):
    """The target answered something this client does not read (no Content-Length)."""


class Run:
    """What every connection shares: whether to send again, and the counts."""

    __slots__ = ("errors", "last_end", "responses", "sending")

    def __init__(self) -> None:
        self.sending = True
        self.responses = 0
        self.errors = 0
        self.last_end = 0.0  # loop time of the last connection's last response


class Connection(asyncio.Protocol):
    """One keep-alive connection: write the request, read to its response's end, repeat."""

    def __init__(self, request: bytes, run: Run, done: asyncio.Future[None]) -> None:
        # per connection
        self._request = request
        self._run = run
        self._done = done
        self._transport: asyncio.Transport | None = None
        # per response
        self._buffer = b""
        self._end = 0  # the response's length once its head is read; 0 before

    def send(self) -> None:
        assert self._transport is not None
        self._transport.write(self._request)

    # protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        if not self._end:
            head = buffer.find(HEAD_END)
            if head < 0:
                self._buffer = buffer
                return
            self._end = head + 4 + _content_length(buffer[:head])
        if len(buffer) < self._end:
            self._buffer = buffer
            return
        run = self._run
        if buffer[9:12] == b"200":  # "HTTP/1.1 200 "
            run.responses += 1
        else:
            run.errors += 1
        self._buffer, self._end = b"", 0  # one request in flight: nothing follows it
        if run.sending:
            self._transport.write(self._request)  # type: ignore[union-attr]
        else:
            run.last_end = asyncio.get_running_loop().time()
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or ConnectionError("the target closed the connection"))

    def _finish(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if not self._done.done():
            if exc is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(exc)


def _content_length(head: bytes) -> int:
    at = head.lower().find(LENGTH)
    if at < 0:
        raise ProtocolError(f"a response without Content-Length: {head[:200]!r}")
    start = at + len(LENGTH)
    stop = head.find(b"\r\n", start)
    return int(head[start:] if stop < 0 else head[start:stop])  # int() strips the spaces


def request_bytes(url: str, body: bytes) -> bytes:
    """What HttpClient writes for POST URL with `Content-Type: text/plain` and `body`."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body


async def main(url: str, users: int, duration: float, data_file: str) -> None:
    with open(data_file, "rb") as f:
        request = request_bytes(url, f.read())
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"{url}: no host")
    loop = asyncio.get_running_loop()
    run = Run()
    connections: list[Connection] = []
    waiting: list[asyncio.Future[None]] = []
    for _ in range(users):
        done = loop.create_future()
        _, conn = await loop.create_connection(
            functools.partial(Connection, request, run, done), parts.hostname, parts.port or 80)
        connections.append(conn)
        waiting.append(done)
    print("started", flush=True)
    start = loop.time()
    for conn in connections:
        conn.send()
    await asyncio.sleep(duration)
    run.sending = False
    await asyncio.wait_for(asyncio.gather(*waiting), timeout=STOP_MARGIN)
    print(json.dumps({"responses": run.responses, "errors": run.errors,
                      "elapsed": run.last_end - start}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(f"usage: {sys.argv[0]} URL USERS DURATION DATA_FILE")
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
