"""The built-in HTTP/1.1 client for load tests: ``from protocol.http import HttpClient``.

One keep-alive connection and at most one request in flight per ``HttpClient``; errors
are typed by fault (``HttpLocalError``: ours, ``HttpRemoteError``: the server's or the
network's). The modules inside are private; everything a client file needs is here.
"""

from protocol.http._client import HttpClient
from protocol.http._errors import (
    HttpClientBusy,
    HttpClientClosed,
    HttpConnectError,
    HttpConnectionClosed,
    HttpConnectTimeout,
    HttpError,
    HttpInvalidRequest,
    HttpInvalidUrl,
    HttpLocalError,
    HttpProtocolError,
    HttpReadTimeout,
    HttpRemoteError,
    HttpStatusError,
)
from protocol.http._fixed import FixedRequest
from protocol.http._response import HttpResponse

__all__ = [
    "FixedRequest",
    "HttpClient",
    "HttpClientBusy",
    "HttpClientClosed",
    "HttpConnectError",
    "HttpConnectTimeout",
    "HttpConnectionClosed",
    "HttpError",
    "HttpInvalidRequest",
    "HttpInvalidUrl",
    "HttpLocalError",
    "HttpProtocolError",
    "HttpReadTimeout",
    "HttpRemoteError",
    "HttpResponse",
    "HttpStatusError",
]
