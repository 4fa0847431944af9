"""One keep-alive HTTP/1.1 connection: an asyncio Protocol fed to httptools.

Used by `protocol.http.HttpClient`; see its docstring for the theory of
operation. One request at a time: `send()` writes a complete request and
returns a future that the parser callbacks resolve with an `HttpResponse`,
or that `fail()` / `connection_lost()` resolve with an `HttpError`.

Figures for the load tester's stats: `send()` reads `protocol.calls.current_op`
(the calling task's, set by the worker's scheduler; None outside a call) and
counts into it the bytes of the request once written; a complete response
adds its status code and its bytes as read off the connection (status line,
headers, body and any interim 1xx response; plain HTTP bytes, so TLS records
add nothing). A request that ends without a complete response (timeout,
closed, malformed, cancelled) counts only its written bytes, and a request
re-sent on a fresh connection counts both writes. A status outside 100-999
(what a message may carry) is not counted; its bytes are.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, NamedTuple, cast

import httptools

from protocol.calls import current_op
from protocol.http._errors import (
    HttpClientClosed,
    HttpConnectionClosed,
    HttpError,
    HttpProtocolError,
    HttpReadTimeout,
)
from protocol.http._response import HttpResponse

if TYPE_CHECKING:
    from protocol.stats import OpStats

# The read-timeout timer fires up to this early (event loop clock granularity).
_TIMER_SLACK = 0.001
_current_op = current_op.get


class RequestHead(NamedTuple):
    """A request prepared once per (method, path, headers) and reused."""

    method: str
    url: str
    is_head: bool
    retryable: bool  # idempotent: may be re-sent on a fresh connection
    head: bytes  # request line and headers, without the final blank line
    bare: bytes  # the complete request when it has no body


_NO_REQUEST = RequestHead("", "", False, False, b"", b"")


class ClosedBeforeResponse(HttpConnectionClosed):
    """Closed before any byte of the response: the request may be retried."""


def body_ends_at_eof(headers: list[tuple[bytes, bytes]]) -> bool:
    """True if a response with these headers is delimited by connection close."""
    for name, value in headers:
        name = name.lower()
        if name == b"content-length":
            return False
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return False
    return True


class HttpConnection(asyncio.Protocol):
    """The protocol for one TCP (or TLS) connection to the server."""

    __slots__ = (
        "chunks",
        "deadline",
        "got",
        "headers",
        "keep_alive",
        "loop",
        "lost",
        "op",
        "origin",
        "parser",
        "read_timeout",
        "request",
        "responses",
        "status",
        "timer",
        "transport",
        "usable",
        "waiter",
    )

    transport: asyncio.Transport

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: str, read_timeout: float) -> None:
        # Per connection.
        self.loop = loop
        self.origin = origin
        self.read_timeout = read_timeout
        self.parser = httptools.HttpResponseParser(self)
        self.usable = False  # True from connection_made until any sign of closing
        self.responses = 0  # completed on this connection: > 0 means reused
        self.lost: asyncio.Future[None] = loop.create_future()
        # One timer per connection, re-armed lazily (see check_deadline).
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0

        # Per request.
        self.waiter: asyncio.Future[HttpResponse] | None = None
        self.request = _NO_REQUEST
        self.status = 0  # 0 until the final response's headers are complete
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.keep_alive = True
        self.got = 0  # bytes of the response read so far
        self.op: OpStats | None = None  # where its figures go (see the module docstring)

    # asyncio.Protocol interface.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.usable = True

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            self.unsolicited()
            return
        self.got += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(HttpProtocolError(
                f"{self.origin} switched protocols (status 101) in response to "
                f"{self.request.method} {self.request.url}; upgrades are not supported",
                url=self.request.url,
            ))  # fmt: skip
        except httptools.HttpParserError as exc:
            self.fail(HttpProtocolError(
                f"malformed response from {self.origin} to "
                f"{self.request.method} {self.request.url}: {exc}",
                url=self.request.url,
            ))  # fmt: skip

    def eof_received(self) -> bool | None:
        self.usable = False
        return None  # let the transport close; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.lost.done():
            self.lost.set_result(None)
        waiter = self.waiter
        if waiter is None:
            return
        request = self.request
        if exc is None and self.status and not request.is_head and body_ends_at_eof(self.headers):
            # httptools cannot finish a body delimited by the close itself.
            self.finish()
            return
        self.waiter = None
        if waiter.done():
            return
        reason = f" ({exc})" if exc is not None else ""
        error: HttpConnectionClosed
        if not self.got:
            error = ClosedBeforeResponse(
                f"{self.origin} closed the connection before responding to "
                f"{request.method} {request.url}{reason}",
                url=request.url,
            )
        else:
            where = "body" if self.status else "headers"
            error = HttpConnectionClosed(
                f"{self.origin} closed the connection in the middle of the response {where} "
                f"to {request.method} {request.url} (truncated response){reason}",
                url=request.url,
            )
        waiter.set_exception(error)

    # httptools parser callbacks: only those we need.

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.waiter is None:
            self.unsolicited()
            return
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self.headers = []  # interim response (100, 103): wait for the final one
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        if self.request.is_head:
            # A HEAD response has no body whatever Content-Length says, but
            # httptools would wait for one: finish now, start a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
            self.finish()

    def on_body(self, body: bytes) -> None:
        if self.waiter is None:  # e.g. a body after a HEAD response
            self.unsolicited()
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.status and self.waiter is not None:
            self.finish()

    # Per request.

    def send(self, data: bytes, request: RequestHead) -> asyncio.Future[HttpResponse]:
        """Write one complete request; the future resolves to its response."""
        try:
            self.transport.write(data)
        except RuntimeError as exc:  # uvloop: the transport closed under us
            self.usable = False
            raise ClosedBeforeResponse(
                f"the connection to {self.origin} closed before {request.method} "
                f"{request.url} could be sent",
                url=request.url,
            ) from exc
        op = self.op = _current_op()  # called from the request's task: its context
        if op is not None:
            op.sent += len(data)
        waiter = self.waiter = self.loop.create_future()
        self.request = request
        self.status = 0
        self.got = 0
        self.deadline = self.loop.time() + self.read_timeout
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self.check_deadline)
        return waiter

    def finish(self) -> None:
        waiter = self.waiter
        assert waiter is not None
        self.waiter = None
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        headers = self.headers
        # Fresh lists now, so that stray bytes cannot reach the response.
        self.headers = []
        self.chunks = []
        self.responses += 1
        if not self.keep_alive:
            self.usable = False
            self.transport.close()
        if not waiter.done():
            request = self.request
            status = self.status
            op = self.op
            if op is not None:
                op.received += self.got
                statuses = op.statuses
                try:
                    statuses[status] += 1
                except KeyError:
                    if 100 <= status <= 999:  # what a message may carry (MAX_STATUS_CODES)
                        statuses[status] = 1
            waiter.set_result(HttpResponse(status, headers, body, request.method, request.url))

    def check_deadline(self) -> None:
        # Re-arming one timer when it fires is cheaper than a timer per request.
        self.timer = None
        if self.waiter is None:
            return
        if self.loop.time() + _TIMER_SLACK < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self.check_deadline)
            return
        request = self.request
        self.fail(HttpReadTimeout(
            f"no complete response from {self.origin} to {request.method} {request.url} "
            f"within the read timeout of {self.read_timeout:g} s",
            url=request.url,
        ))  # fmt: skip

    # Ending the connection.

    def fail(self, error: HttpError) -> None:
        """Drop the connection and fail the request in flight with `error`."""
        self.abort()
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_exception(error)

    def abort(self) -> None:
        """Drop the connection at once: its state is no longer known."""
        self.usable = False
        self.transport.abort()

    def unsolicited(self) -> None:
        # Bytes when no request is in flight: the server is confused; drop it.
        self.usable = False
        self.transport.abort()

    async def close(self) -> None:
        """Close gracefully (or abort a request in flight) and wait, briefly."""
        if self.waiter is not None:
            self.fail(HttpClientClosed(
                f"the client was closed while {self.request.method} {self.request.url} "
                "was in flight",
                url=self.request.url,
            ))  # fmt: skip
        else:
            self.usable = False
            self.transport.close()
        if not self.lost.done():
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self.lost)
            except TimeoutError:
                self.transport.abort()
