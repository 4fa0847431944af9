"""A small, fast HTTP/1.1 target that counts what it answers.

    python bench/_counting_target.py PORT

Every request, whatever its method and path, is answered `200 "ok"` with a
Content-Length and kept alive (unless the client asks to close); the body is
read and dropped. `GET /__count` answers `{"served": N}`, N being the number of
responses written so far to all other requests (itself not counted). One
process, uvloop, requests parsed by httptools: fast enough to be the fallback
target when nginx is not installed, and the target of the exactness checks,
where the load tester's success count must equal `served`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

import httptools
import uvloop

REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
COUNT_PATH = b"/__count"


class Counter:
    __slots__ = ("served",)

    def __init__(self) -> None:
        self.served = 0


class CountingServer(asyncio.Protocol):
    """One connection; the parser calls back only what is needed to answer."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        url, self._url = self._url, b""
        if url == COUNT_PATH:
            body = json.dumps({"served": self._counter.served}).encode()
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                            b"Content-Type: application/json\r\n\r\n%b" % (len(body), body))
        else:
            transport.write(REPLY)
            self._counter.served += 1
        if not self._parser.should_keep_alive():
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(port: int) -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: CountingServer(counter), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit(f"usage: {sys.argv[0]} PORT")
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
