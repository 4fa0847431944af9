"""Errors raised by the HTTP client (`protocol.http`).

As in h11, each error says whose fault it was:

    HttpError
    ├── HttpLocalError          the caller misused the client; fix the code
    │   ├── HttpInvalidUrl      bad base URL or request path
    │   ├── HttpInvalidRequest  bad method, header, or body + json together
    │   ├── HttpClientClosed    request on (or during) a closed client
    │   └── HttpClientBusy      a second request while one is in flight
    ├── HttpConnectError        could not connect (refused, DNS, TLS handshake)
    │   └── HttpConnectTimeout
    └── HttpRemoteError         the server misbehaved or was too slow
        ├── HttpProtocolError   malformed response
        ├── HttpConnectionClosed  connection closed before the response ended
        ├── HttpReadTimeout     no complete response within read_timeout
        └── HttpStatusError     raised only by HttpResponse.raise_for_status()

Every message names the URL (or origin) concerned; `url` holds it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol.http._response import HttpResponse


class HttpError(Exception):
    """Base of every error raised by the HTTP client."""

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class HttpLocalError(HttpError):
    """The caller misused the client: nothing was sent, fix the calling code."""


class HttpInvalidUrl(HttpLocalError):
    """The base URL or a request path cannot be used."""


class HttpInvalidRequest(HttpLocalError):
    """Bad method, bad header, or both `body` and `json` given."""


class HttpClientClosed(HttpLocalError):
    """The client was closed before or during the request."""


class HttpClientBusy(HttpLocalError):
    """A request was started while another one was in flight on the client.

    A client holds one connection and one request at a time: use one client
    per concurrent task.
    """


class HttpConnectError(HttpError):
    """The connection could not be established (refused, DNS, TLS)."""


class HttpConnectTimeout(HttpConnectError):
    """The connection was not established within `connect_timeout`."""


class HttpRemoteError(HttpError):
    """The server misbehaved, or did not answer in time."""


class HttpProtocolError(HttpRemoteError):
    """The server sent bytes that are not a valid HTTP/1.1 response."""


class HttpConnectionClosed(HttpRemoteError):
    """The connection closed before the response was complete."""


class HttpReadTimeout(HttpRemoteError):
    """The complete response did not arrive within `read_timeout`."""


class HttpStatusError(HttpRemoteError):
    """The response has an error status (4xx or 5xx).

    Only raised by `HttpResponse.raise_for_status()`; a request itself never
    raises for a status code.
    """

    def __init__(self, message: str, *, url: str, response: HttpResponse) -> None:
        super().__init__(message, url=url)
        self.response = response
        self.status = response.status
