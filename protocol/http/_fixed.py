"""The fixed-request client: one HTTP request, the same every call, driven by the worker.

A client class that declares its request (`FixedRequest`: method, path, body, headers
as class attributes) rather than making it in `execute()` lets the worker skip what an
`await execute()` costs a call: a task's step, two coroutines, a future and a response
object. Once a client's connection is open, the worker calls `drive()`, and from then
on each response's end records its call and writes the next request, inside the
connection's callback (`FixedConnection.finish`), as wrk drives its connections.

Everything that is not a 2xx response on a connection that carries the next request
ends the drive and goes back to the worker's call loop: a non-2xx status, an error
(raised by `drive()` as the call's failure, counted by the worker), a server that
closes the connection (the next call, through `execute()`, opens a new one), the stop.
So the figures are the same as `execute()`'s: a call is timed from the end of the one
before it, a success recorded as the worker's call loop records one, status codes and
bytes counted under the call's name as `HttpClient` counts them, a non-2xx response a
failure with the same error, a request the server closed its reused connection under
made again on a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from json import dumps
from time import perf_counter_ns
from typing import Any, ClassVar, cast

from protocol.client import DrivenClient
from protocol.driven import CancelledBetweenCalls, DrivenCalls, ResendCall
from protocol.http._client import HttpClient
from protocol.http._connection import ClosedBeforeResponse, HttpConnection
from protocol.http._errors import HttpStatusError
from protocol.http._origin import HeadKey, RequestHead
from protocol.http._response import HttpResponse

_clock = perf_counter_ns
_Future = asyncio.Future
# a drive's future: None when it ended with its last call recorded, else the non-2xx
# response that ended it
_Drive = asyncio.Future[HttpResponse | None]


class FixedConnection(HttpConnection):
    """An HttpConnection that, while driven (`calls` set), records each 2xx response's
    call and writes the next request from the response's end."""

    __slots__ = ("calls", "data", "t0")

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: str, read_timeout: float) -> None:
        super().__init__(loop, origin, read_timeout)
        self.calls: DrivenCalls | None = None  # set while driven
        self.data = b""  # the request, while driven
        self.t0 = 0  # the start of the call in flight, while driven

    def drive(self, calls: DrivenCalls, data: bytes, request: RequestHead,
              t0: int) -> _Drive | None:
        """Write the first request of a drive on this idle open connection; None if the
        transport refused it (the connection is then dropped)."""
        try:
            self.transport.write(data)
        except RuntimeError:  # uvloop: the transport closed under us
            self.abort()
            return None
        st = calls.st
        st.sent += len(data)
        self.calls, self.data, self.t0, self.op = calls, data, t0, st
        loop = self.loop
        drive: _Drive = _Future(loop=loop)
        self.waiter = cast("asyncio.Future[HttpResponse]", drive)
        self.request = request
        self.sent_at = loop.time()
        if self.timer is None:
            self.arm()
        return drive

    def finish(self) -> None:
        calls = self.calls
        status = self.status
        waiter = self.waiter
        if calls is None or not 200 <= status < 300 or waiter is None or waiter.done():
            if calls is not None and status:
                # a final non-2xx: the drive ends with its response; or the drive was
                # cancelled (its task not resumed yet): as for execute(), a call whose
                # response comes after its cancellation counts as cancelled, not here
                self.calls = None
            HttpConnection.finish(self)
            return
        # a 2xx while driven: HttpConnection.finish's bookkeeping, with no response made
        self.status = 0
        if self.body is not None:
            self.body = self.body_more = None
        self.head = self.head_more = None
        got = self.got
        self.got = 0
        st = calls.st
        st.received += got
        statuses = st.statuses
        try:
            statuses[status] += 1
        except KeyError:
            statuses[status] = 1
        # the call, recorded as the worker's call loop records one
        t1 = _clock()
        dt = t1 - self.t0
        st.ok += 1
        st.sum_ns += dt
        if dt > st.max_ns:
            st.max_ns = dt
        if dt < st.min_ns:
            st.min_ns = dt
        s = dt.bit_length() - 8
        if s > 0:
            calls.rows[s][dt >> s] += 1
        else:
            calls.rows[0][dt] += 1
        if calls.watching:
            calls.first_ok()
        self.t0 = t1
        if not self.parser.should_keep_alive():
            self.usable = False
            self.transport.close()
        if self.usable and not calls.stopping:
            data = self.data
            try:
                self.transport.write(data)
            except RuntimeError:  # closed under us: the next call opens a new connection
                self.abort()
            else:
                st.sent += len(data)  # (sent at t0: see time_left)
                if self.timer is None:
                    self.arm()
                return
        # no call in flight: the drive ends (the stop, or the connection is done)
        self.calls = None
        self.waiter = None
        cast(_Drive, waiter).set_result(None)

    on_message_complete = finish  # httptools: the end of a message

    def time_left(self) -> float:
        if self.calls is None:
            return HttpConnection.time_left(self)
        # driven: a request goes as the call before it ends, at t0 (no loop clock read)
        return self.read_timeout - (_clock() - self.t0) / 1e9


class _FixedHttpClient(HttpClient):
    __slots__ = ()
    _connection_type = FixedConnection


class FixedRequest(DrivenClient):
    """One HTTP request, the same every call: the fastest way to load one URL.

    Declare the request as class attributes (or set them in `global_init`); the config's
    URL (`host`) is the base URL::

        from protocol.http import FixedRequest

        class Hammer(FixedRequest):
            method = "POST"
            path = "/api/items"            # None (default): the URL's own path
            body = b"id=1"                 # bytes or str; None: no body
            headers = {"Content-Type": "application/x-www-form-urlencoded"}

    or `json = {"id": 1}` instead of `body`: sent as compact JSON, with
    `Content-Type: application/json` unless `headers` gives one (as `HttpClient`'s
    `json=`).

    A call succeeds on a 2xx status; any other status fails it with `HttpStatusError`,
    a transport error with its `HttpError`, as `examples/http_fast.py` counts them.
    Each client holds one keep-alive connection (`HttpClient`, with `connect_timeout`
    and `read_timeout`). In the closed model with no wait time, no stages and no
    iterations, the worker drives each client's calls from its connection's callbacks (no task step,
    coroutine, future or response object a call: see `protocol.http._fixed`); anywhere
    else the calls go through `execute()`, with the same figures.

    A subclass that overrides `execute()` (to read the response, say) is an ordinary
    client: its `execute()` is called for every call. One that overrides
    `init_before_use` must call `super().init_before_use(host)`.
    """

    method: ClassVar[str] = "GET"
    path: ClassVar[str | None] = None
    body: ClassVar[bytes | str | None] = None
    json: ClassVar[Any] = None  # an object sent as JSON, instead of body
    headers: ClassVar[Mapping[str, str] | None] = None
    connect_timeout: ClassVar[float] = 5.0
    read_timeout: ClassVar[float] = 30.0

    __slots__ = ("http",)

    def __init__(self) -> None:
        super().__init__()
        self.http: HttpClient | None = None

    @classmethod
    def drivable(cls) -> bool:
        return cls.execute is FixedRequest.execute

    def init_before_use(self, host: str) -> Any:
        cls = type(self)
        self.http = _FixedHttpClient(host, headers=cls.headers,
                                     connect_timeout=cls.connect_timeout,
                                     read_timeout=cls.read_timeout)

    async def execute(self) -> None:
        http = self.http
        if http is None:
            raise RuntimeError(f"{type(self).__name__}: no HTTP client: an overriding "
                               "init_before_use must call super().init_before_use(host)")
        response = await http.request(self.method, self.path, body=self.body,
                                      json=self.json)
        if not 200 <= response.status < 300:
            raise _failed(response)

    async def shutdown(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def drive(self, calls: DrivenCalls, t0: int) -> int:
        http = self.http
        conn = None if http is None else http._conn
        if not isinstance(conn, FixedConnection) or conn.waiter is not None or (
                not conn.usable):
            return t0  # no idle open connection: execute() makes the next call
        assert http is not None
        method, path, body, json = self.method, self.path, self.body, self.json
        key: HeadKey
        if json is None:
            key = method if path is None else (method, path)
        elif body is None:  # as HttpClient.request makes it
            key = (method, path, True)
            body = dumps(json, separators=(",", ":")).encode()
        else:
            return t0  # both: execute() fails the call with HttpInvalidRequest
        head = http._prepared.get(key) or http._origin.cached(key)
        data = head.bare if body is None else head.with_body(body)
        drive = conn.drive(calls, data, head, t0)
        if drive is None:
            return t0
        try:
            response = await drive
        except ClosedBeforeResponse:
            # the server closed the reused connection as the request went: as
            # HttpClient.request does, an idempotent request is made again
            if head.retryable:
                raise ResendCall(conn.t0) from None
            raise
        except asyncio.CancelledError:
            if conn.t0 > calls.ended:  # the end of the last call recorded
                calls.ended = conn.t0
            if drive.done() and not drive.cancelled() and drive.exception() is None and (
                    drive.result() is None):
                # the drive had ended, its last call recorded, none in flight
                raise CancelledBetweenCalls from None
            conn.abandon()  # mid-request: the connection's state is unknown
            raise
        finally:
            conn.calls = None
        if response is not None:
            raise _failed(response)
        return conn.t0


def _failed(response: HttpResponse) -> HttpStatusError:
    """The error of a call whose response has a status other than 2xx."""
    try:
        response.raise_for_status()
    except HttpStatusError as e:
        return e
    return HttpStatusError(f"{response.method} {response.url} returned {response.status}",
                           url=response.url, response=response)
