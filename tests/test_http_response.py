"""What the per-request savings of protocol.http must not change, as a user sees it.

Response headers are parsed only when read (`protocol.http._headers`), a request
body sent again is not re-encoded (`RequestHead.last`), clients built alike share
their `Origin`, and an idle connection holds neither timer nor parser: each is
checked here against real servers on 127.0.0.1, on asyncio and uvloop, and for the
head arriving in pieces, against the connection fed directly.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from protocol.http import HttpClient, HttpInvalidRequest, HttpResponse, HttpStatusError
from protocol.http._connection import HttpConnection
from protocol.http._origin import RequestHead
from tests import test_http_client
from tests.http_servers import HttpTestServer, Request, response
from tests.test_http_client import Run

run = test_http_client.run  # the fixture: each test on asyncio and on uvloop

# Repeated names, any case, spaces around a value (httptools keeps the trailing ones),
# a value with a colon: as sent.
HEADERS = [
    ("Set-Cookie", "a=1; Path=/"),
    ("x-lower", "  padded  "),
    ("X-MiXeD", "one"),
    ("Set-Cookie", "b=2"),
    ("Location", "http://example.test:8080/x"),
    ("x-mixed", "two"),
]
RAW_PAIRS = [
    (b"Set-Cookie", b"a=1; Path=/"),
    (b"x-lower", b"padded  "),
    (b"X-MiXeD", b"one"),
    (b"Set-Cookie", b"b=2"),
    (b"Location", b"http://example.test:8080/x"),
    (b"x-mixed", b"two"),
]


def answer(data: Callable[[Request], bytes], keep_alive: bool = True
           ) -> Callable[[Request, asyncio.StreamWriter], Coroutine[Any, Any, bool]]:
    async def _handle(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(data(request))
        return keep_alive

    return _handle


def check_headers(resp: HttpResponse, extra: list[tuple[bytes, bytes]]) -> None:
    assert resp.headers == RAW_PAIRS + extra
    assert resp.headers is resp.headers  # parsed once
    assert resp.header("set-cookie") == "a=1; Path=/"
    assert resp.header("SET-COOKIE") == "a=1; Path=/"
    assert resp.header_all("Set-Cookie") == ["a=1; Path=/", "b=2"]
    assert resp.header_all("x-mixed") == ["one", "two"]
    assert resp.header("X-LOWER") == "padded  "
    assert resp.header("location") == "http://example.test:8080/x"
    assert resp.header("missing") is None
    assert resp.header("missing", "dflt") == "dflt"
    assert resp.header_all("missing") == []


# Lazy headers.


def test_headers_give_the_same_answers_when_parsed_late(run: Run[None]) -> None:
    async def main() -> None:
        srv = answer(lambda r: response(200, b"body", HEADERS))
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            first = await client.get()
            second = await client.get()
            assert not hasattr(first, "_headers")  # not parsed before someone asks
            # read after the connection went on to the next response: still its own
            check_headers(first, [(b"Content-Length", b"4")])
            check_headers(second, [(b"Content-Length", b"4")])
            assert (second.status, second.body, second.ok) == (200, b"body", True)

    run(main())


def test_headers_of_every_kind_of_response(run: Run[None]) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\nSet-Cookie: early=1\r\n\r\n"
    big = bytes(range(256)) * 400  # 100 KiB: the response keeps its head, not a copy

    def data(r: Request) -> bytes:
        if r.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Kind: head\r\n\r\n"
        if r.target == "/early":
            return early + response(201, b"made", HEADERS)
        if r.target == "/chunked":
            return response(200, big, HEADERS, chunked=True, chunk_size=7000)
        return response(200, big, HEADERS)

    async def main() -> None:
        async with HttpTestServer(answer(data)) as server, HttpClient(server.url()) as client:
            resp = await client.head()
            assert resp.headers == [(b"Content-Length", b"1000"), (b"X-Kind", b"head")]
            resp = await client.get("/early")
            check_headers(resp, [(b"Content-Length", b"4")])  # not the 103's
            resp = await client.get("/chunked")
            check_headers(resp, [(b"Transfer-Encoding", b"chunked")])
            assert resp.body == big
            resp = await client.get("/big")
            assert len(resp._raw) < 1000
            check_headers(resp, [(b"Content-Length", b"102400")])
            assert resp.body == big
            assert server.connections == 1

    run(main())


def test_headers_of_a_body_ended_by_the_close(run: Run[None]) -> None:
    async def main() -> None:
        srv = answer(lambda r: response(200, b"to the end", HEADERS, length=False), False)
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            resp = await client.get()
            assert resp.body == b"to the end"
            check_headers(resp, [])

    run(main())


def test_a_head_read_in_pieces() -> None:
    # The connection fed one byte at a time: the head spans many reads.
    data = b"HTTP/1.1 103 Early\r\nLink: </a>\r\n\r\n" + response(200, b"piecewise", HEADERS)
    loop = asyncio.new_event_loop()
    written: list[bytes] = []

    class Transport(asyncio.Transport):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            written.append(bytes(data))

    try:
        conn = HttpConnection(loop, "http://test", 5.0)
        conn.connection_made(Transport())
        for _ in range(2):  # the second on a reused connection
            waiter = conn.send(b"GET / HTTP/1.1\r\n\r\n", RequestHead("GET", "/", b"", b""))
            for i in range(len(data)):
                conn.data_received(data[i : i + 1])
            resp = waiter.result()
            assert (resp.status, resp.body) == (200, b"piecewise")
            check_headers(resp, [(b"Content-Length", b"9")])
        assert conn.usable and len(written) == 2
        conn.drop_timer()
    finally:
        loop.close()


def test_a_response_built_by_hand() -> None:
    resp = HttpResponse(404, [(b"X-A", b"1")], b"", "GET", "http://h/x")
    assert (resp.header("x-a"), resp.headers, resp.ok) == ("1", [(b"X-A", b"1")], False)
    with pytest.raises(HttpStatusError, match=r"GET http://h/x returned 404 \(client error\)"):
        resp.raise_for_status()


def test_raise_for_status_allocates_nothing_on_success() -> None:
    resp = HttpResponse(204, [], b"", "GET", "http://h/")
    for _ in range(100):  # warm up (the interpreter's own caches)
        resp.raise_for_status()
    before = sys.getallocatedblocks()
    for _ in range(10_000):
        resp.raise_for_status()
    assert sys.getallocatedblocks() - before < 10  # not one per call


# Request bodies sent again.


def test_a_body_sent_again_arrives_as_it_is_each_time(run: Run[None]) -> None:
    async def main() -> None:
        srv = answer(lambda r: response(200, r.body, [("X-Target", r.target)]))
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            body = b'{"same": "object"}'
            for _ in range(3):
                assert (await client.post(body=body)).body == body
            assert (await client.post(body=b'{"same": "obj' + b'ect"}')).body == body
            assert (await client.post("/other", body=body)).header("x-target") == "/other"
            text = "héllo"
            for _ in range(2):
                assert (await client.put(body=text)).body == text.encode()
            buffer = bytearray(b"first")  # mutable: never taken for the same body
            assert (await client.post(body=buffer)).body == b"first"
            buffer[:] = b"second"
            assert (await client.post(body=buffer)).body == b"second"
            view = memoryview(b"a view")
            assert (await client.post(body=view)).body == b"a view"
            large = b"L" * 100_000
            for _ in range(2):
                assert (await client.post(body=large)).body == large
            assert [len(r.body) for r in server.requests[-2:]] == [100_000, 100_000]
            assert server.connections == 1

    run(main())


# Clients built alike share what they derive from their arguments.


def test_clients_built_alike_share_their_origin() -> None:
    url = "http://127.0.0.1:8080/base"
    a, b = HttpClient(url), HttpClient(url, read_timeout=30.0)
    assert a._origin is b._origin
    assert HttpClient(url, headers={"X-A": "1"})._origin is not a._origin
    assert HttpClient(url, read_timeout=1.0)._origin is not a._origin
    assert HttpClient(url + "?q=1")._origin is not a._origin
    with pytest.raises(HttpInvalidRequest, match="must be a str"):
        HttpClient(url, headers={"X-A": ["not", "a", "str"]})  # type: ignore[dict-item]
    with pytest.raises(HttpInvalidRequest, match="invalid header name"):
        HttpClient(url, headers={"Bad Name": "1"})


# Idle connections.


def held(conn: HttpConnection) -> tuple[asyncio.TimerHandle | None, object]:
    """What a connection holds between requests besides its transport."""
    return conn.timer, conn.parser


def test_an_idle_connection_holds_no_timer_nor_parser(run: Run[None]) -> None:
    async def main() -> None:
        async with HttpTestServer() as server, HttpClient(server.url()) as client:
            assert (await client.get("/1")).status == 200  # as a client's init would
            conn = client._conn
            assert conn is not None and conn.waiter is None
            assert held(conn) == (None, None)
            assert (await client.get("/2")).header("x-target") == "/2"
            timer, parser = held(conn)
            assert timer is not None and parser is not None
            timer.cancel()
            conn.check_deadline()  # the timer fires and finds the connection idle
            assert held(conn) == (None, None)
            assert (await client.head("/3")).status == 200
            assert (await client.get("/4")).header("x-target") == "/4"
            assert client._conn is conn and server.connections == 1

    run(main())
