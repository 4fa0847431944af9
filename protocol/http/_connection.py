"""One keep-alive HTTP/1.1 connection: an asyncio Protocol fed to httptools.

Used by `protocol.http.HttpClient`; see its docstring for the theory of
operation. One request at a time: `send()` writes a complete request and
returns a future that the parser callbacks resolve with an `HttpResponse`,
or that `fail()` / `connection_lost()` resolve with an `HttpError`.
`HttpClient.request` does what `send()` does itself, inlined, on an idle open
connection (the per-request path); `send()` serves the first request on a new one.

The per-request path creates what the caller gets and little else: the future, the
response, the body (the parser's one chunk as it is; chunks joined only if there
are several). The parser has no `on_header` callback: the bytes read up to the end
of the head are handed to the response as they are, parsed only if its headers are
read (`protocol.http._headers`). Nothing else is allocated per request: the read
timeout is one timer per connection, re-armed when it fires, not one per request.
An idle connection holds no per-request state, and once its timer fired and found
it idle, neither the timer nor a parser (made again by the next request).

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
from asyncio import InvalidStateError
from typing import TYPE_CHECKING, Any, cast

import httptools

from protocol.calls import current_op
from protocol.http._errors import (
    HttpClientClosed,
    HttpConnectionClosed,
    HttpError,
    HttpProtocolError,
    HttpReadTimeout,
)
from protocol.http._headers import KEEP_WHOLE, body_ends_at_eof, head_only
from protocol.http._origin import RequestHead
from protocol.http._response import HttpResponse

if TYPE_CHECKING:
    from protocol.stats import OpStats

# The read-timeout timer fires up to this early (event loop clock granularity).
_TIMER_SLACK = 0.001
# When armed by a request, the timer first fires after this long (or at the deadline, if
# sooner): a connection idle by then, as a load test's client often is after its first
# request, drops it (and its parser) without waiting for the read timeout.
_FIRST_CHECK = 1.0
_NO_REQUEST = RequestHead("", "", b"", b"")
_current_op = current_op.get
_new_response = object.__new__
# What loop.create_future() makes on asyncio and uvloop, without the method call.
_Future = asyncio.Future


class ClosedBeforeResponse(HttpConnectionClosed):
    """Closed before any byte of the response: the request may be retried."""


class HttpConnection(asyncio.Protocol):
    """The protocol for one TCP (or TLS) connection to the server."""

    __slots__ = (
        "body",
        "body_more",
        "gone",
        "got",
        "head",
        "head_more",
        "loop",
        "lost",
        "op",
        "origin",
        "parser",
        "read_timeout",
        "request",
        "reused",
        "sent_at",
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
        # None while idle (dropped by check_deadline, made again by send): never None
        # while a request is in flight. Typed Any as httptools is.
        self.parser: Any = httptools.HttpResponseParser(self)
        self.usable = False  # True from connection_made until any sign of closing
        self.reused = False  # True once a response completed on this connection
        self.gone = False  # connection_lost was called
        self.lost: asyncio.Future[None] | None = None  # made by close() if it must wait
        # One timer per connection, re-armed lazily (see check_deadline).
        self.timer: asyncio.TimerHandle | None = None

        # Per request.
        self.waiter: asyncio.Future[HttpResponse] | None = None
        self.request = _NO_REQUEST
        self.op: OpStats | None = None  # where its figures go (see the module docstring)
        self.sent_at = 0.0  # loop time the request was written (its deadline: + timeout)
        self.got = 0  # bytes of the response read so far (0 again after it)
        self.status = 0  # 0 until the final response's headers are complete
        # What was read until the head was complete: usually one read, the whole
        # response; the rest only if the head came in several reads.
        self.head: bytes | None = None
        self.head_more: list[bytes] | None = None
        # The body: httptools' first chunk, the others only if there are several.
        self.body: bytes | None = None
        self.body_more: list[bytes] | None = None

    # asyncio.Protocol interface.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.usable = True

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            self.unsolicited()
            return
        self.got += len(data)
        if self.head is None:  # the response's first read: kept for its headers
            self.head = data
        elif not self.status:  # the head is not complete: keep its bytes too
            if self.head_more is None:
                self.head_more = [data]
            else:
                self.head_more.append(data)
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
        self.gone = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        waiter = self.waiter
        if waiter is None:
            return
        request = self.request
        if exc is None and self.status and not request.is_head and body_ends_at_eof(
            self.raw_head()
        ):
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

    def on_headers_complete(self) -> None:
        if self.waiter is None:
            self.unsolicited()
            return
        parser = self.parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            return  # interim response (100, 103): wait for the final one
        self.status = status
        if self.request.is_head:
            # A HEAD response has no body whatever Content-Length says, but
            # httptools would wait for one: finish now, start a fresh parser.
            self.finish()
            self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        if self.waiter is None:  # e.g. a body after a HEAD response
            self.unsolicited()
        elif self.body is None:
            self.body = body
        elif self.body_more is None:
            self.body_more = [body]
        else:
            self.body_more.append(body)

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
        loop = self.loop
        waiter = self.waiter = _Future(loop=loop)
        self.request = request
        self.sent_at = loop.time()
        if self.timer is None:  # the first request, or the first since idle
            self.arm()
        return waiter

    def arm(self) -> None:
        """The first request since idle was sent: a parser again, and the timer."""
        if self.parser is None:
            self.parser = httptools.HttpResponseParser(self)
        self.timer = self.loop.call_at(
            self.sent_at + min(self.read_timeout, _FIRST_CHECK), self.check_deadline
        )

    def raw_head(self, head: bytes | None = None) -> bytes:
        """The bytes read until the head was complete (see `protocol.http._headers`);
        `head` the first read, when already taken from the connection."""
        if head is None:
            head = self.head
        if head is None:
            return b""
        if self.head_more is not None:
            return b"".join([head, *self.head_more])
        return head

    def finish(self) -> None:
        """Resolve the request in flight with its response, if its head is complete."""
        waiter = self.waiter
        status = self.status
        if waiter is None or not status:
            return  # the end of an interim response, or of one nobody asked for
        self.waiter = None
        self.status = 0
        body = self.body
        if body is None:
            body = b""
        else:
            self.body = None
            if self.body_more is not None:
                body = b"".join([body, *self.body_more])
                self.body_more = None
        raw = self.head
        self.head = None
        if raw is None or self.head_more is not None or len(raw) > KEEP_WHOLE:
            raw = head_only(self.raw_head(raw))  # the head in several reads, or a long read
            self.head_more = None
        got = self.got
        self.got = 0
        if not self.parser.should_keep_alive():
            self.usable = False
            self.transport.close()
        if not self.reused:
            # The connection's first response: in a load test often a client's
            # init_before_use, after which it may wait long. Hold neither timer nor
            # parser after it; a second request makes them again (once).
            self.reused = True
            self.drop_timer()
        # built without __init__, a call the per-request path saves (see HttpResponse)
        response: HttpResponse = _new_response(HttpResponse)
        response.status = status
        response._raw = raw
        response.body = body
        response._request = self.request
        try:
            waiter.set_result(response)
        except InvalidStateError:  # cancelled meanwhile: only its written bytes count
            return
        op = self.op
        if op is not None:
            op.received += got
            statuses = op.statuses
            try:
                statuses[status] += 1
            except KeyError:
                if 100 <= status <= 999:  # what a message may carry (MAX_STATUS_CODES)
                    statuses[status] = 1

    on_message_complete = finish  # httptools: the end of a message

    def check_deadline(self) -> None:
        # Re-arming one timer when it fires is cheaper than a timer per request.
        self.timer = None
        if self.waiter is None:
            self.parser = None  # idle: hold neither; the next send() makes both again
            return
        left = self.time_left()
        if left > _TIMER_SLACK:
            self.timer = self.loop.call_later(left, self.check_deadline)
            return
        request = self.request
        self.fail(HttpReadTimeout(
            f"no complete response from {self.origin} to {request.method} {request.url} "
            f"within the read timeout of {self.read_timeout:g} s",
            url=request.url,
        ))  # fmt: skip

    def time_left(self) -> float:
        """Seconds until the read timeout of the request in flight."""
        return self.sent_at + self.read_timeout - self.loop.time()

    def drop_timer(self) -> None:
        """Cancel the timer and drop the parser: no request is in flight."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.parser = None

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

    def abandon(self) -> None:
        """The request in flight was cancelled: drop the connection, and the request."""
        self.waiter = None
        self.abort()

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
        if not self.gone:
            lost = self.lost = self.loop.create_future()
            try:
                async with asyncio.timeout(1.0):
                    await lost
            except TimeoutError:
                self.transport.abort()
