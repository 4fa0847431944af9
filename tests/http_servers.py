"""Small asyncio HTTP/1.1 servers on 127.0.0.1:0 for the HTTP client tests.

`HttpTestServer` parses requests (Content-Length bodies only, as our client
sends) and hands each to a handler that writes whatever bytes the test
wants, well-formed or not; `response()` builds the usual ones.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Self


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    connection: int  # 1 for the first connection the server accepted


# Writes a response; returns False to close the connection afterwards.
Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]


def response(
    status: int = 200,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    *,
    chunked: bool = False,
    length: bool = True,
    chunk_size: int = 65536,
) -> bytes:
    """A response; `length=False` omits Content-Length (body ends at close)."""
    lines = [f"HTTP/1.1 {status} Whatever"]
    lines += [f"{name}: {value}" for name, value in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        parts = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
        payload = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    else:
        if length:
            lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def echo(request: Request, writer: asyncio.StreamWriter) -> bool:
    """Echo the body, and the method, target and content type as headers."""
    headers = [
        ("X-Method", request.method),
        ("X-Target", request.target),
        ("X-Content-Type", request.headers.get("content-type", "")),
        ("X-Host", request.headers.get("host", "")),
        ("X-Content-Length", request.headers.get("content-length", "")),
    ]
    writer.write(response(200, request.body, headers))
    return True


async def read_request(reader: asyncio.StreamReader, connection: int) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, target, headers, body, connection)


@dataclass
class HttpTestServer:
    handler: Handler = echo
    ssl: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # a connection ended
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, path: str = "/") -> str:
        scheme = "https" if self.ssl else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._converse(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.closed.set()
            self._tasks.discard(task)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        connection: int) -> None:
        """One connection's requests, each answered by ``handler``."""
        while True:
            request = await read_request(reader, connection)
            if request is None:
                break
            self.requests.append(request)
            if not await self.handler(request, writer):
                break
            await writer.drain()
