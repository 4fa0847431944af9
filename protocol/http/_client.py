"""A fast HTTP/1.1 client for load tests: one keep-alive connection per client.

Usage, inside a load test::

    client = HttpClient("http://127.0.0.1:8080/test", read_timeout=5.0)
    resp = await client.post(json={"id": 1})      # POST to /test, the base path
    resp = await client.get("/health")            # same origin, another path
    resp.status, resp.headers, resp.body, resp.text(), resp.json()
    await client.close()

Theory of operation
-------------------
A client owns at most one connection (`HttpConnection`, an asyncio Protocol
parsed by httptools) and at most one request in flight: a second concurrent
request raises `HttpClientBusy`, so back-pressure is simply "wait for the
response". Concurrency comes from many clients, one per task.

The constructor only parses and checks the base URL; the connection is opened
by the first request (so no running loop is needed to build a client) and
re-opened by the first request after the server closed it (`Connection:
close`, idle timeout, keep-alive limit). If the server closes a *reused*
connection before sending any byte of the response, an idempotent request
(GET, HEAD, PUT, DELETE, OPTIONS, TRACE) is re-sent once on a fresh
connection; anything else raises `HttpConnectionClosed`.

The per-request path is kept to a few microseconds, and allocates little
more than what the caller gets (the response, its body) and the one future
that carries it: the request line and headers are encoded once per (method,
path) and cached (`RequestHead`), with the last body sent and its request
(the same body object again costs nothing); a request is one
`transport.write`; the parser calls back only `on_headers_complete`,
`on_body` and `on_message_complete` (response headers are parsed when read,
not when received); a body in one chunk is returned as it is; and the read
timeout is one timer per connection re-armed lazily, not one per request.
Passing `headers=` to a request skips the cache (the head is built per call).

Memory: clients built with the same arguments share what they derive from
them (`protocol.http._origin`); an idle connected client holds its
connection and, once idle for a second (or after its first response), only
its transport: no parser, no timer, no per-request state.

httptools cannot finish two kinds of response on its own; the connection
does: a HEAD response is complete at the end of its headers (whatever
Content-Length says), and a body with neither Content-Length nor chunked
encoding is complete when the server closes the connection. 1xx interim
responses are skipped; 204 and 304 have no body.

Non-2xx responses are returned, not raised: `raise_for_status()` raises
`HttpStatusError`. Errors are typed by fault (see `protocol.http._errors`).
Redirects are not followed and bodies are not decompressed.

Inside a load test's call, each response's status code and the bytes sent
and received are counted under the call's name (`protocol.calls.current_op`,
one lookup per request); requests made elsewhere (`init_before_use`, outside
a worker) count nowhere. What exactly is counted: `protocol.http._connection`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from json import dumps
from ssl import SSLContext, SSLError
from typing import Any, ClassVar

from protocol.calls import current_op
from protocol.http._connection import ClosedBeforeResponse, HttpConnection
from protocol.http._errors import (
    HttpClientBusy,
    HttpClientClosed,
    HttpConnectError,
    HttpConnectTimeout,
    HttpInvalidRequest,
)
from protocol.http._origin import HeadKey, RequestHead, origin_for
from protocol.http._response import HttpResponse

Body = bytes | bytearray | memoryview | str
_current_op = current_op.get
_Future = asyncio.Future  # what loop.create_future() makes, without the method call


class HttpClient:
    """An HTTP/1.1 client holding one keep-alive connection to one origin.

    `url` is the base URL (`http://` or `https://`); its path (and query) is
    the default request path. `headers` are sent with every request. For
    https, `ssl` is the `ssl.SSLContext` to use (default: the system's
    trusted CAs). `connect_timeout` bounds opening a connection (TCP and
    TLS); `read_timeout` bounds the wait from sending a request to receiving
    its complete response. Not thread-safe; use from one event loop.
    """

    __slots__ = ("_busy", "_closed", "_conn", "_origin", "_prepared")

    # what a connection is (protocol.http._fixed drives its own subclass)
    _connection_type: ClassVar[type[HttpConnection]] = HttpConnection

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        # Per client: what it derives from its arguments, shared with the clients built
        # with the same ones (request heads by (method, path) included); the connection.
        origin = self._origin = origin_for(url, headers, connect_timeout, read_timeout, ssl)
        self._prepared = origin.prepared
        self._conn: HttpConnection | None = None
        # True while a connection is being opened (a request then is refused).
        self._busy = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<HttpClient {self._origin.url}>"

    @property
    def url(self) -> str:
        """The base URL given to the constructor."""
        return self._origin.url

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def request(
        self,
        method: str = "GET",
        path: str | None = None,
        *,
        body: Body | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """Send one request and return its complete response.

        `path` is a path on the base URL's origin ("/x?y=1"), a full URL of
        the same origin, or None for the base URL's path. `body` (bytes or
        str, sent as UTF-8) or `json` (serialised, with Content-Type:
        application/json unless `headers` sets one; `json=None` means no
        JSON, send `body=b"null"` for a JSON null), not both. Host and
        Content-Length are set automatically; `headers` adds to or replaces
        the client's headers for this request.
        """
        key: HeadKey
        if json is None and headers is None:  # the usual case: one test
            key = method if path is None else (method, path)  # no tuple for the base path
            prepared = self._prepared.get(key) or self._origin.cached(key)
        else:
            if headers is None:
                key = (method, path, True)
                prepared = self._prepared.get(key) or self._origin.cached(key)
            else:
                prepared = self._origin.prepare(method, path, headers, json is not None)
            if json is not None:
                if body is not None:
                    raise HttpInvalidRequest(
                        f"{prepared.method} {prepared.url}: give body= or json=, not both",
                        url=prepared.url,
                    )
                body = dumps(json, separators=(",", ":")).encode()
        if body is None:
            data = prepared.bare
        else:
            last = prepared.last  # the last body sent with this head, and its request
            data = last[1] if last[0] is body else prepared.with_body(body)

        conn = self._conn
        if conn is None or conn.waiter is not None or not conn.usable:
            # No connection yet, or not usable; or a request in flight or connecting.
            return await self._request_slow(data, prepared)
        # The fast path: an idle open connection. HttpConnection.send, inlined.
        try:
            conn.transport.write(data)
        except RuntimeError:  # uvloop: the transport closed under us
            conn.abort()
            return await self._request_slow(data, prepared)  # not sent: send it afresh
        op = conn.op = _current_op()  # this task's call (see HttpConnection)
        if op is not None:
            op.sent += len(data)
        loop = conn.loop
        waiter = conn.waiter = _Future(loop=loop)
        conn.request = prepared
        conn.sent_at = loop.time()
        if conn.timer is None:  # the first request since idle
            conn.arm()
        try:
            return await waiter
        except ClosedBeforeResponse:
            # The server closed an idle keep-alive connection as we reused it.
            if not (conn.reused and prepared.retryable):
                raise
        except asyncio.CancelledError:
            conn.abandon()  # mid-request: the connection state is unknown
            raise
        return await self._request_slow(data, prepared)

    def get(
        self, path: str | None = None, *, headers: Mapping[str, str] | None = None
    ) -> Coroutine[Any, Any, HttpResponse]:
        return self.request("GET", path, headers=headers)

    def head(
        self, path: str | None = None, *, headers: Mapping[str, str] | None = None
    ) -> Coroutine[Any, Any, HttpResponse]:
        return self.request("HEAD", path, headers=headers)

    def post(
        self,
        path: str | None = None,
        *,
        body: Body | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Coroutine[Any, Any, HttpResponse]:
        return self.request("POST", path, body=body, json=json, headers=headers)

    def put(
        self,
        path: str | None = None,
        *,
        body: Body | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Coroutine[Any, Any, HttpResponse]:
        return self.request("PUT", path, body=body, json=json, headers=headers)

    def patch(
        self,
        path: str | None = None,
        *,
        body: Body | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Coroutine[Any, Any, HttpResponse]:
        return self.request("PATCH", path, body=body, json=json, headers=headers)

    def delete(
        self,
        path: str | None = None,
        *,
        body: Body | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Coroutine[Any, Any, HttpResponse]:
        return self.request("DELETE", path, body=body, json=json, headers=headers)

    async def close(self) -> None:
        """Close the connection; a request in flight fails with HttpClientClosed.

        The client cannot be used afterwards. Closing twice is harmless.
        """
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    # Slow path: connecting (preparing request heads: protocol.http._origin).

    async def _request_slow(self, data: bytes, prepared: RequestHead) -> HttpResponse:
        """A request without an idle open connection: refused if another is in flight
        or a connection is being opened; else sent on a new connection."""
        conn = self._conn
        if self._busy or (conn is not None and conn.waiter is not None):
            raise HttpClientBusy(
                f"{prepared.method} {prepared.url}: another request is in flight on this "
                "client; use one HttpClient per concurrent task",
                url=prepared.url,
            )
        self._busy = True  # until the connection is open: a request meanwhile is refused
        try:
            conn = await self._connect()
        finally:
            self._busy = False
        try:
            return await conn.send(data, prepared)
        except asyncio.CancelledError:
            conn.abandon()
            raise

    async def _connect(self) -> HttpConnection:
        origin = self._origin
        if self._closed:
            raise HttpClientClosed(f"request on a closed client for {origin.url}", url=origin.url)
        self._conn = None
        loop = asyncio.get_running_loop()
        conn = self._connection_type(loop, origin.name, origin.read_timeout)
        try:
            async with asyncio.timeout(origin.connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.server_hostname,
                )
        except TimeoutError:
            raise HttpConnectTimeout(
                f"cannot connect to {origin.name}: no connection within the connect "
                f"timeout of {origin.connect_timeout:g} s",
                url=origin.url,
            ) from None
        except SSLError as exc:
            raise HttpConnectError(
                f"TLS handshake with {origin.name} failed: {exc}", url=origin.url
            ) from exc
        except OSError as exc:
            raise HttpConnectError(
                f"cannot connect to {origin.name}: {exc.strerror or exc}", url=origin.url
            ) from exc
        if self._closed:  # closed while we were connecting
            conn.abort()
            raise HttpClientClosed(f"the client for {origin.url} was closed", url=origin.url)
        self._conn = conn
        return conn
