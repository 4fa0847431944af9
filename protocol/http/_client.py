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

The per-request path is kept to a few microseconds: the request line and
headers are encoded once per (method, path) and cached (`RequestHead`), a
request is one `transport.write`, the parser calls back only `on_header`,
`on_headers_complete`, `on_body` and `on_message_complete`, one future
carries the response, body chunks are joined once at the end, and the read
timeout is one timer per connection re-armed lazily, not one per request.
Passing `headers=` to a request skips the cache (the head is built per call).

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
import re
from collections.abc import Coroutine, Mapping
from json import dumps
from ssl import SSLContext, SSLError, create_default_context
from typing import Any
from urllib.parse import SplitResult, urlsplit

from protocol.http._connection import ClosedBeforeResponse, HttpConnection, RequestHead
from protocol.http._errors import (
    HttpClientBusy,
    HttpClientClosed,
    HttpConnectError,
    HttpConnectTimeout,
    HttpInvalidRequest,
    HttpInvalidUrl,
    HttpLocalError,
)
from protocol.http._response import HttpResponse

Body = bytes | bytearray | memoryview | str

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_BODY_EXPECTED = frozenset({"POST", "PUT", "PATCH"})  # send Content-Length: 0 if no body
_AUTOMATIC = frozenset({"content-length", "transfer-encoding"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WITH_BODY = b"%bContent-Length: %d\r\n\r\n%b"
_CACHE_SIZE = 1024  # distinct (method, path) heads kept; cleared when full


def _split_url(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        raise HttpInvalidUrl(f"invalid URL {url!r}: {exc}", url=url) from None
    return parts


class HttpClient:
    """An HTTP/1.1 client holding one keep-alive connection to one origin.

    `url` is the base URL (`http://` or `https://`); its path (and query) is
    the default request path. `headers` are sent with every request. For
    https, `ssl` is the `ssl.SSLContext` to use (default: the system's
    trusted CAs). `connect_timeout` bounds opening a connection (TCP and
    TLS); `read_timeout` bounds the wait from sending a request to receiving
    its complete response. Not thread-safe; use from one event loop.
    """

    __slots__ = (
        "_busy",
        "_closed",
        "_conn",
        "_connect_timeout",
        "_default_target",
        "_headers",
        "_host",
        "_origin",
        "_port",
        "_prepared",
        "_read_timeout",
        "_server_hostname",
        "_ssl",
        "_url",
    )

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        parts = _split_url(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise HttpInvalidUrl(
                f"invalid URL {url!r}: the scheme must be http:// or https://", url=url
            )
        host = parts.hostname
        if not host:
            raise HttpInvalidUrl(f"invalid URL {url!r}: no host", url=url)
        if parts.username is not None or parts.password is not None:
            raise HttpInvalidUrl(
                f"invalid URL {url!r}: credentials in the URL are not supported; "
                "send an Authorization header instead",
                url=url,
            )
        if ssl is not None and scheme != "https":
            raise HttpInvalidUrl(f"ssl= given for a plain http:// URL {url!r}", url=url)
        if connect_timeout <= 0 or read_timeout <= 0:
            raise HttpLocalError(f"timeouts must be > 0 (client for {url!r})", url=url)
        port = parts.port or _DEFAULT_PORTS[scheme]
        host_header = f"[{host}]" if ":" in host else host
        if port != _DEFAULT_PORTS[scheme]:
            host_header += f":{port}"

        self._url = url
        self._origin = f"{scheme}://{host_header}"
        self._host = host
        self._port = port
        self._ssl = (ssl or create_default_context()) if scheme == "https" else None
        self._server_hostname = host if scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._headers: dict[str, tuple[str, str]] = {"host": ("Host", host_header)}
        self._headers = self._merge_headers(headers, url)
        self._default_target = self._check_target(
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), url
        )

        # Per client: request heads by (method, path, json), and the connection.
        self._prepared: dict[tuple[str, str | None, bool], RequestHead] = {}
        self._conn: HttpConnection | None = None
        # Per request.
        self._busy = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<HttpClient {self._url}>"

    @property
    def url(self) -> str:
        """The base URL given to the constructor."""
        return self._url

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
        if headers is None:
            key = (method, path, json is not None)
            prepared = self._prepared.get(key)
            if prepared is None:
                prepared = self._prepare(method, path, None, json is not None)
                if len(self._prepared) >= _CACHE_SIZE:
                    self._prepared.clear()
                self._prepared[key] = prepared
        else:
            prepared = self._prepare(method, path, headers, json is not None)

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
            if type(body) is not bytes:
                body = self._encode_body(body, prepared)
            data = _WITH_BODY % (prepared.head, len(body), body)

        if self._busy:
            raise HttpClientBusy(
                f"{prepared.method} {prepared.url}: another request is in flight on this "
                "client; use one HttpClient per concurrent task",
                url=prepared.url,
            )
        self._busy = True
        try:
            conn = self._conn
            if conn is None or not conn.usable:
                conn = await self._connect()
            reused = conn.responses > 0
            try:
                return await conn.send(data, prepared)
            except ClosedBeforeResponse:
                # The server closed an idle keep-alive connection as we reused it.
                if not (reused and prepared.retryable):
                    raise
            conn = await self._connect()
            return await conn.send(data, prepared)
        except asyncio.CancelledError:
            if self._conn is not None:
                self._conn.abort()  # mid-request: the connection state is unknown
            raise
        finally:
            self._busy = False

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

    # Slow path: connecting and preparing request heads.

    async def _connect(self) -> HttpConnection:
        if self._closed:
            raise HttpClientClosed(f"request on a closed client for {self._url}", url=self._url)
        self._conn = None
        loop = asyncio.get_running_loop()
        conn = HttpConnection(loop, self._origin, self._read_timeout)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                )
        except TimeoutError:
            raise HttpConnectTimeout(
                f"cannot connect to {self._origin}: no connection within the connect "
                f"timeout of {self._connect_timeout:g} s",
                url=self._url,
            ) from None
        except SSLError as exc:
            raise HttpConnectError(
                f"TLS handshake with {self._origin} failed: {exc}", url=self._url
            ) from exc
        except OSError as exc:
            raise HttpConnectError(
                f"cannot connect to {self._origin}: {exc.strerror or exc}", url=self._url
            ) from exc
        if self._closed:  # closed while we were connecting
            conn.abort()
            raise HttpClientClosed(f"the client for {self._url} was closed", url=self._url)
        self._conn = conn
        return conn

    def _prepare(
        self, method: str, path: str | None, headers: Mapping[str, str] | None, is_json: bool
    ) -> RequestHead:
        target = self._default_target if path is None else self._target(path)
        url = self._origin + target
        upper = method.upper() if isinstance(method, str) else ""
        if not _TOKEN.fullmatch(upper):
            raise HttpInvalidRequest(f"invalid HTTP method {method!r} for {url}", url=url)
        merged = self._merge_headers(headers, url) if headers else self._headers
        if is_json and "content-type" not in merged:
            merged = {**merged, "content-type": ("Content-Type", "application/json")}
        lines = [f"{upper} {target} HTTP/1.1\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in merged.values())
        try:
            head = "".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            raise HttpInvalidRequest(
                f"{upper} {url}: header values must be latin-1 text", url=url
            ) from None
        bare = head + (b"Content-Length: 0\r\n\r\n" if upper in _BODY_EXPECTED else b"\r\n")
        return RequestHead(upper, url, upper == "HEAD", upper in _IDEMPOTENT, head, bare)

    def _merge_headers(
        self, headers: Mapping[str, str] | None, url: str
    ) -> dict[str, tuple[str, str]]:
        merged = dict(self._headers)
        for name, value in (headers or {}).items():
            if not isinstance(name, str) or not _TOKEN.fullmatch(name):
                raise HttpInvalidRequest(f"invalid header name {name!r} for {url}", url=url)
            if not isinstance(value, str) or _BAD_VALUE.search(value):
                raise HttpInvalidRequest(
                    f"invalid value for header {name!r} for {url}: {value!r} "
                    "(must be a str without control characters)",
                    url=url,
                )
            lower = name.lower()
            if lower in _AUTOMATIC:
                raise HttpInvalidRequest(
                    f"header {name!r} for {url} is set automatically; do not pass it", url=url
                )
            merged[lower] = (name, value.strip())
        return merged

    def _target(self, path: str) -> str:
        if path.startswith("/"):
            return self._check_target(path, self._origin + path)
        if "://" in path:
            parts = _split_url(path)
            scheme = parts.scheme.lower()
            port = parts.port or _DEFAULT_PORTS.get(scheme)
            if (scheme, parts.hostname, port) != (
                urlsplit(self._origin).scheme,
                self._host,
                self._port,
            ):
                raise HttpInvalidUrl(
                    f"URL {path!r} is not on this client's origin {self._origin}; "
                    "use one HttpClient per origin",
                    url=path,
                )
            query = f"?{parts.query}" if parts.query else ""
            return self._check_target((parts.path or "/") + query, path)
        raise HttpInvalidUrl(
            f"invalid request path {path!r}: it must start with '/' or be a full URL "
            f"of {self._origin}",
            url=path,
        )

    @staticmethod
    def _check_target(target: str, url: str) -> str:
        target = target.partition("#")[0]
        if not target.isascii() or _BAD_TARGET.search(target):
            raise HttpInvalidUrl(
                f"invalid request path in {url!r}: spaces, control and non-ASCII "
                "characters must be percent-encoded",
                url=url,
            )
        return target

    @staticmethod
    def _encode_body(body: object, prepared: RequestHead) -> bytes:
        if isinstance(body, str):
            return body.encode()
        if isinstance(body, (bytes, bytearray, memoryview)):
            return bytes(body)
        raise HttpInvalidRequest(
            f"{prepared.method} {prepared.url}: body must be bytes or str, not "
            f"{type(body).__name__} (use json= for objects)",
            url=prepared.url,
        )
