"""What an `HttpClient` derives from its constructor's arguments, shared between clients.

A load test builds thousands of clients with the same arguments (one per simulated
user, same URL, same headers). Everything they derive from them (the checked URL,
the merged default headers, the TLS context, the request heads prepared per (method,
path)) is the same for all, so `origin_for` builds one `Origin` per distinct set of
arguments and every such client holds a reference to it: an idle connected client
costs its connection and a few pointers, not its own copy of the heads. The table
of origins is weak (an `Origin` lives as long as a client holds it) and works as
`sys.intern` does: what `origin_for` returns depends on its arguments alone, and
the heads cache inside an `Origin` is a memo too.

A `RequestHead` is one request line plus headers, encoded once; it also remembers the
last body sent with it and the bytes of that whole request, since a load test usually
sends the same body object again and again (a cached request is then one identity
test, not a format and a copy of the body).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from ssl import SSLContext, create_default_context
from urllib.parse import SplitResult, urlsplit
from weakref import WeakValueDictionary

from protocol.http._errors import HttpInvalidRequest, HttpInvalidUrl, HttpLocalError

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_BODY_EXPECTED = frozenset({"POST", "PUT", "PATCH"})  # send Content-Length: 0 if no body
_AUTOMATIC = frozenset({"content-length", "transfer-encoding"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WITH_BODY = b"%bContent-Length: %d\r\n\r\n%b"
_CACHE_SIZE = 1024  # distinct (method, path) heads kept per origin; cleared when full
_LAST_BODY_MAX = 16 * 1024  # a larger body is not kept (nor its request) for the next call

# A cached head's key: the method alone for the base URL's path without json=, else
# (method, path), and (method, path, True) with json= (which may add a Content-Type).
HeadKey = str | tuple[str, str | None] | tuple[str, str | None, bool]


def split_url(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        raise HttpInvalidUrl(f"invalid URL {url!r}: {exc}", url=url) from None
    return parts


class RequestHead:
    """A request prepared once per (method, path, headers) and reused."""

    __slots__ = ("bare", "head", "is_head", "last", "method", "retryable", "url")

    def __init__(self, method: str, url: str, head: bytes, bare: bytes) -> None:
        self.method = method
        self.url = url
        self.is_head = method == "HEAD"
        self.retryable = method in _IDEMPOTENT  # may be re-sent on a fresh connection
        self.head = head  # request line and headers, without the final blank line
        self.bare = bare  # the complete request when it has no body
        # The last body sent with this head (bytes or str, never a mutable buffer) and
        # the complete request with it; one tuple, so that it is read in one go.
        self.last: tuple[object, bytes] = (None, b"")

    def with_body(self, body: object) -> bytes:
        """The complete request with `body` (bytes, or str sent as UTF-8)."""
        data: bytes
        if isinstance(body, str):
            data = body.encode()
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, (bytearray, memoryview)):
            data = bytes(body)
        else:
            raise HttpInvalidRequest(
                f"{self.method} {self.url}: body must be bytes or str, not "
                f"{type(body).__name__} (use json= for objects)",
                url=self.url,
            )
        request: bytes = _WITH_BODY % (self.head, len(data), data)
        if isinstance(body, (bytes, str)) and len(data) <= _LAST_BODY_MAX:
            self.last = (body, request)  # immutable: the same object is the same body
        return request


class Origin:
    """A base URL checked and split, its default headers, TLS context and timeouts, and
    the request heads prepared from them. Built by `origin_for`; never changed after
    construction but for the heads cache."""

    __slots__ = (
        "__weakref__",
        "connect_timeout",
        "default_target",
        "headers",
        "host",
        "name",
        "port",
        "prepared",
        "read_timeout",
        "scheme",
        "server_hostname",
        "ssl",
        "url",
    )

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None,
        connect_timeout: float,
        read_timeout: float,
        ssl: SSLContext | None,
    ) -> None:
        parts = split_url(url)
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

        self.url = url
        self.scheme = scheme
        self.name = f"{scheme}://{host_header}"  # what messages call the origin
        self.host = host
        self.port = port
        self.ssl = (ssl or create_default_context()) if scheme == "https" else None
        self.server_hostname = host if scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.headers: dict[str, tuple[str, str]] = {"host": ("Host", host_header)}
        self.headers = self.merge_headers(headers, url)
        self.default_target = check_target(
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), url
        )
        self.prepared: dict[HeadKey, RequestHead] = {}

    def cached(self, key: HeadKey) -> RequestHead:
        """The head for `key`, prepared and kept for the next request with the same key."""
        prepared = self.prepared.get(key)
        if prepared is None:
            if isinstance(key, tuple):
                prepared = self.prepare(key[0], key[1], None, len(key) == 3)
            else:  # prepare() says what is wrong if it is no str
                prepared = self.prepare(key, None, None, False)
            if len(self.prepared) >= _CACHE_SIZE:
                self.prepared.clear()
            self.prepared[key] = prepared
        return prepared

    def prepare(
        self, method: str, path: str | None, headers: Mapping[str, str] | None, is_json: bool
    ) -> RequestHead:
        target = self.default_target if path is None else self.target(path)
        url = self.name + target
        upper = method.upper() if isinstance(method, str) else ""
        if not _TOKEN.fullmatch(upper):
            raise HttpInvalidRequest(f"invalid HTTP method {method!r} for {url}", url=url)
        merged = self.merge_headers(headers, url) if headers else self.headers
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
        return RequestHead(upper, url, head, bare)

    def merge_headers(
        self, headers: Mapping[str, str] | None, url: str
    ) -> dict[str, tuple[str, str]]:
        merged = dict(self.headers)
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

    def target(self, path: str) -> str:
        if path.startswith("/"):
            return check_target(path, self.name + path)
        if "://" in path:
            parts = split_url(path)
            scheme = parts.scheme.lower()
            port = parts.port or _DEFAULT_PORTS.get(scheme)
            if (scheme, parts.hostname, port) != (self.scheme, self.host, self.port):
                raise HttpInvalidUrl(
                    f"URL {path!r} is not on this client's origin {self.name}; "
                    "use one HttpClient per origin",
                    url=path,
                )
            query = f"?{parts.query}" if parts.query else ""
            return check_target((parts.path or "/") + query, path)
        raise HttpInvalidUrl(
            f"invalid request path {path!r}: it must start with '/' or be a full URL "
            f"of {self.name}",
            url=path,
        )


# The origins in use, by the arguments they were built from (see the module docstring).
_ORIGINS: WeakValueDictionary[Hashable, Origin] = WeakValueDictionary()


def check_target(target: str, url: str) -> str:
    target = target.partition("#")[0]
    if not target.isascii() or _BAD_TARGET.search(target):
        raise HttpInvalidUrl(
            f"invalid request path in {url!r}: spaces, control and non-ASCII "
            "characters must be percent-encoded",
            url=url,
        )
    return target


def origin_for(
    url: str,
    headers: Mapping[str, str] | None,
    connect_timeout: float,
    read_timeout: float,
    ssl: SSLContext | None,
) -> Origin:
    """The `Origin` for these arguments: the one a live client already uses, if any."""
    key = (url, tuple(headers.items()) if headers else (), connect_timeout, read_timeout, ssl)
    try:
        origin = _ORIGINS.get(key)
    except TypeError:  # unhashable: not shared, and Origin() says what is wrong with it
        return Origin(url, headers, connect_timeout, read_timeout, ssl)
    if origin is None:
        origin = _ORIGINS[key] = Origin(url, headers, connect_timeout, read_timeout, ssl)
    return origin

