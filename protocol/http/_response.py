"""The response returned by `HttpClient.request()`."""

from __future__ import annotations

import json as _json
from typing import Any

from protocol.http._errors import HttpStatusError
from protocol.http._headers import parse_head
from protocol.http._origin import RequestHead


class HttpResponse:
    """A complete HTTP response, body included.

    `headers` is the list of `(name, value)` byte pairs in the order the server sent
    them, names in their original case; it is not a mapping because building one would
    cost time on every request. Use `header()` for a case-insensitive lookup. The
    headers are parsed the first time `headers`, `header()`, `header_all()` or
    `text()` needs them, not when the response arrives (see `protocol.http._headers`).

    The connection builds a received response without `__init__` (the per-request
    path): `status`, `body`, `_raw` the bytes read up to the end of its head, and
    `_request` the request's prepared head (its method and URL); `_headers` is unset
    until the headers are read.
    """

    __slots__ = ("_headers", "_raw", "_request", "body", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        method: str,
        url: str,
    ) -> None:
        self.status = status
        self._headers: list[tuple[bytes, bytes]] = headers
        self._raw = b""
        self.body = body
        self._request = RequestHead(method, url, b"", b"")

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status} {self.method} {self.url} ({len(self.body)} bytes)>"

    @property
    def method(self) -> str:
        """The request's method."""
        return self._request.method

    @property
    def url(self) -> str:
        """The request's full URL."""
        return self._request.url

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """Every header as a `(name, value)` pair of bytes, in the order received."""
        try:
            return self._headers
        except AttributeError:  # not parsed yet
            headers = self._headers = parse_head(self._raw)
            self._raw = b""
            return headers

    @property
    def ok(self) -> bool:
        """True unless the status is 4xx or 5xx."""
        return self.status < 400

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header called `name` (any case), decoded as latin-1."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return default

    def header_all(self, name: str) -> list[str]:
        """Every header called `name` (any case), in order."""
        wanted = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == wanted]

    def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        """The body decoded with `encoding`, else the Content-Type charset, else UTF-8."""
        if encoding is None:
            encoding = "utf-8"
            content_type = self.header("content-type")
            if content_type is not None:
                for param in content_type.split(";")[1:]:
                    key, _, value = param.partition("=")
                    if key.strip().lower() == "charset" and value.strip():
                        encoding = value.strip().strip('"')
        return self.body.decode(encoding, errors)

    def json(self) -> Any:
        """The body parsed as JSON (raises `json.JSONDecodeError` if it is not)."""
        return _json.loads(self.body)

    def raise_for_status(self) -> HttpResponse:
        """Raise `HttpStatusError` for a 4xx or 5xx status; else return self (no
        allocation: a call on every response costs a comparison)."""
        if self.status >= 400:
            kind = "client error" if self.status < 500 else "server error"
            raise HttpStatusError(
                f"{self.method} {self.url} returned {self.status} ({kind})",
                url=self.url,
                response=self,
            )
        return self
