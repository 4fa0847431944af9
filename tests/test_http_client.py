"""Tests for protocol.http against real asyncio servers on 127.0.0.1.

Every test runs on both plain asyncio and uvloop (the `run` fixture), each
bounded in time by `asyncio.wait_for`.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from protocol.calls import MAX_STATUS_CODES, current_op
from protocol.http import (
    HttpClient,
    HttpClientBusy,
    HttpClientClosed,
    HttpConnectError,
    HttpConnectionClosed,
    HttpConnectTimeout,
    HttpInvalidRequest,
    HttpInvalidUrl,
    HttpLocalError,
    HttpProtocolError,
    HttpReadTimeout,
    HttpRemoteError,
    HttpStatusError,
)
from protocol.stats import OpStats
from tests.http_servers import HttpTestServer, Request, response

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]
TEST_TIMEOUT = 20.0


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Run[Any]]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def _run(coro: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(asyncio.wait_for(coro, TEST_TIMEOUT))

    yield _run


def handler(
    fn: Callable[[Request], bytes | None], keep_alive: bool = True
) -> Callable[[Request, asyncio.StreamWriter], Coroutine[Any, Any, bool]]:
    """A server handler writing fn(request); None closes without a response."""

    async def _handle(request: Request, writer: asyncio.StreamWriter) -> bool:
        data = fn(request)
        if data is None:
            return False
        writer.write(data)
        return keep_alive

    return _handle


# Keep-alive and bodies.


def test_keep_alive_reuses_one_connection(run: Run[None]) -> None:
    async def main() -> None:
        async with HttpTestServer() as server, HttpClient(server.url()) as client:
            for i in range(200):
                resp = await client.get(f"/n/{i}")
                assert resp.status == 200
                assert resp.header("x-target") == f"/n/{i}"
            assert server.connections == 1
            assert len(server.requests) == 200

    run(main())


def test_content_length_body_and_headers(run: Run[None]) -> None:
    body = b"hello world"

    async def main() -> None:
        srv = handler(lambda r: response(200, body, [("X-Thing", "A"), ("Set-Cookie", "a=1")]))
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            resp = await client.get()
            assert (resp.status, resp.body, resp.text()) == (200, body, "hello world")
            assert resp.header("X-THING") == "A"
            assert resp.header("missing") is None
            assert (b"X-Thing", b"A") in resp.headers
            assert resp.ok
            assert resp.raise_for_status() is resp

    run(main())


def test_chunked_body(run: Run[None]) -> None:
    body = bytes(range(256)) * 1000

    async def main() -> None:
        srv = handler(lambda r: response(200, body, chunked=True, chunk_size=1000))
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            for _ in range(3):
                assert (await client.get()).body == body
            assert server.connections == 1

    run(main())


@pytest.mark.parametrize("chunked", [False, True])
def test_large_body_round_trip(run: Run[None], chunked: bool) -> None:
    payload = os.urandom(5 * 1024 * 1024)

    async def main() -> None:
        srv = handler(lambda r: response(200, r.body, chunked=chunked))
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            resp = await client.post("/upload", body=payload)
            assert resp.status == 200
            assert resp.body == payload
            resp = await client.get("/small")
            assert resp.body == b""
            assert server.connections == 1

    run(main())


def test_head_with_content_length_then_get(run: Run[None]) -> None:
    def answer(r: Request) -> bytes:
        if r.method == "HEAD":  # announces a body but, as HEAD must, sends none
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Kind: head\r\n\r\n"
        return response(200, b"x" * 1000)

    async def main() -> None:
        async with HttpTestServer(handler(answer)) as server, HttpClient(server.url()) as client:
            started = time.monotonic()
            resp = await client.head("/")
            assert time.monotonic() - started < 1.0
            assert (resp.status, resp.body, resp.header("x-kind")) == (200, b"", "head")
            assert resp.header("content-length") == "1000"
            assert (await client.get("/")).body == b"x" * 1000
            assert (await client.head("/")).body == b""
            assert (await client.get("/")).body == b"x" * 1000
            assert server.connections == 1

    run(main())


def test_body_ends_at_connection_close(run: Run[None]) -> None:
    body = b"until the end" * 10000

    async def main() -> None:
        srv = handler(lambda r: response(200, body, length=False), keep_alive=False)
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            assert (await client.get()).body == body
            assert (await client.get()).body == body
            assert server.connections == 2

    run(main())


def test_no_body_statuses_keep_connection(run: Run[None]) -> None:
    statuses = iter([204, 304, 200])

    async def main() -> None:
        srv = handler(lambda r: response(next(statuses), length=False))
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            for status in (204, 304):
                resp = await client.get()
                assert (resp.status, resp.body) == (status, b"")
            assert server.connections == 1

    run(main())


def test_interim_1xx_responses_are_skipped(run: Run[None]) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"

    async def main() -> None:
        srv = handler(lambda r: early + response(201, b"made", [("X-Final", "yes")]))
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            for _ in range(2):
                resp = await client.post(body=b"x")
                assert (resp.status, resp.body, resp.header("x-final")) == (201, b"made", "yes")
                assert resp.header("link") is None
            assert server.connections == 1

    run(main())


def test_error_status_is_returned_not_raised(run: Run[None]) -> None:
    async def main() -> None:
        srv = handler(lambda r: response(503, b"busy"))
        async with HttpTestServer(srv) as server, HttpClient(server.url("/x")) as client:
            resp = await client.get()
            assert (resp.status, resp.ok) == (503, False)
            expected = r"GET http://127\.0\.0\.1:\d+/x returned 503 \(server error\)"
            with pytest.raises(HttpStatusError, match=expected):
                resp.raise_for_status()
            try:
                resp.raise_for_status()
            except HttpRemoteError as exc:
                assert isinstance(exc, HttpStatusError)
                assert (exc.status, exc.response) == (503, resp)

    run(main())


# Reconnecting.


def test_connection_close_reconnects(run: Run[None]) -> None:
    async def main() -> None:
        srv = handler(lambda r: response(200, r.target.encode(), [("Connection", "close")]))
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            for i in range(5):
                assert (await client.get(f"/{i}")).body == f"/{i}".encode()
            assert server.connections == 5

    run(main())


@pytest.mark.parametrize("wait_for_close", [False, True])
def test_server_closes_idle_connection(run: Run[None], wait_for_close: bool) -> None:
    # Keep-alive response, then the server closes (as on an idle timeout).
    # Sent at once, the next request races the close: only an idempotent
    # one is retried; sent after the client saw the close, any request works.
    method = "POST" if wait_for_close else "GET"

    async def main() -> None:
        srv = handler(lambda r: response(200, b"ok"), keep_alive=False)
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            for _ in range(3):
                server.closed.clear()
                assert (await client.request(method)).body == b"ok"
                if wait_for_close:
                    await server.closed.wait()
                    await asyncio.sleep(0.01)  # let the client's loop see the EOF
            assert server.connections == 3

    run(main())


def test_http10_response_closes_connection(run: Run[None]) -> None:
    # HTTP/1.0 without keep-alive: the client closes even if the server does not.
    async def main() -> None:
        srv = handler(lambda r: b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            for _ in range(3):
                assert (await client.get()).body == b"ok"
            assert server.connections == 3

    run(main())


@pytest.mark.parametrize(
    "extra",
    [b"unsolicited junk", response(200, b"twice", [("X-Extra", "1")])],
)
def test_bytes_after_the_response_drop_the_connection(run: Run[None], extra: bytes) -> None:
    async def main() -> None:
        srv = handler(lambda r: response(200, b"ok", [("X-A", "1")]) + extra)
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            for _ in range(3):
                resp = await client.get()
                assert resp.body == b"ok"
                assert [k for k, _ in resp.headers] == [b"X-A", b"Content-Length"]
            assert server.connections == 3

    run(main())


def test_body_after_head_response_drops_the_connection(run: Run[None]) -> None:
    async def main() -> None:
        srv = handler(lambda r: response(200, b"a body HEAD must not have"))
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            for _ in range(2):
                assert (await client.head()).body == b""
                assert (await client.get()).body == b"a body HEAD must not have"
            assert server.connections == 3  # each HEAD's connection is dropped

    run(main())


def test_transport_closed_under_the_client(run: Run[None]) -> None:
    # The race where the transport closes just before a request is written.
    async def main() -> None:
        async with HttpTestServer() as server, HttpClient(server.url()) as client:
            assert (await client.get()).status == 200
            assert client._conn is not None
            client._conn.transport.close()  # without the connection noticing yet
            assert (await client.get()).status == 200  # retried on a new connection
            assert server.connections == 2

    run(main())


class _ClosedHandle:
    """A transport whose handle is closed already: its write raises, as uvloop's does
    (`unable to perform operation`) in the instant before the protocol hears of it."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()  # type: ignore[attr-defined]


def test_a_request_the_transport_refused_is_sent_on_a_new_connection(run: Run[None]) -> None:
    # Nothing of it was written, so even a POST (never re-sent once written) goes out.
    async def main() -> None:
        async with HttpTestServer() as server, HttpClient(server.url()) as client:
            assert (await client.get()).status == 200
            conn = client._conn
            assert conn is not None
            conn.transport = _ClosedHandle(conn.transport)  # type: ignore[assignment]
            assert (await client.post(body=b"once")).status == 200
            assert [(r.method, r.body, r.connection) for r in server.requests] == [
                ("GET", b"", 1), ("POST", b"once", 2)]

    run(main())


def test_reused_connection_closed_before_response(run: Run[None]) -> None:
    # The second request on each connection finds it closed by the server:
    # an idempotent request is re-sent once on a fresh connection, a POST is not.
    def answer(r: Request) -> bytes | None:
        first = not any(q.connection == r.connection for q in server.requests[:-1])
        return response(200, b"ok") if first else None

    async def main() -> None:
        async with HttpClient(server.url()) as client:
            assert (await client.get()).body == b"ok"
            assert (await client.get()).body == b"ok"  # retried
            assert server.connections == 2
            with pytest.raises(HttpConnectionClosed, match="before responding to POST"):
                await client.post(body=b"x")
            assert server.connections == 2

    server = HttpTestServer(handler(answer))

    async def with_server() -> None:
        async with server:
            await main()

    run(with_server())


def test_fresh_connection_closed_before_response_is_an_error(run: Run[None]) -> None:
    async def main() -> None:
        async with HttpTestServer(handler(lambda r: None)) as server:
            async with HttpClient(server.url()) as client:
                with pytest.raises(HttpConnectionClosed, match="closed the connection before"):
                    await client.get()
            assert server.connections == 1

    run(main())


def test_cancelled_request_then_next_request(run: Run[None]) -> None:
    got_first = asyncio.Event()

    async def srv(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/hang":
            got_first.set()
            await asyncio.Event().wait()
        writer.write(response(200, b"ok"))
        return True

    async def main() -> None:
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            task = asyncio.create_task(client.get("/hang"))
            await got_first.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await client.get("/")).body == b"ok"
            assert server.connections == 2

    run(main())


# The server misbehaves.


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ],
)
def test_malformed_response(run: Run[None], garbage: bytes) -> None:
    async def main() -> None:
        # The server keeps the connection open: the error must not wait for a close.
        async with HttpTestServer(handler(lambda r: garbage)) as server:
            async with HttpClient(server.url(), read_timeout=10) as client:
                for _ in range(2):  # the client drops the connection, then reconnects
                    with pytest.raises(HttpProtocolError, match=r"malformed response from http"):
                        await client.get("/m")
            assert server.connections == 2

    run(main())


@pytest.mark.parametrize(
    "truncated",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
)
def test_truncated_response(run: Run[None], truncated: bytes) -> None:
    async def main() -> None:
        srv = handler(lambda r: truncated, keep_alive=False)
        async with HttpTestServer(srv) as server, HttpClient(server.url()) as client:
            with pytest.raises(HttpConnectionClosed, match="truncated response"):
                await client.get("/t")

    run(main())


def test_read_timeout(run: Run[None]) -> None:
    async def never(request: Request, writer: asyncio.StreamWriter) -> bool:
        await asyncio.Event().wait()
        return False

    async def main() -> None:
        async with (
            HttpTestServer(never) as server,
            HttpClient(server.url("/slow"), read_timeout=0.3) as client,
        ):
            started = time.monotonic()
            with pytest.raises(HttpReadTimeout, match=r"/slow within the read timeout of 0\.3 s"):
                await client.get()
            assert 0.29 <= time.monotonic() - started < 1.3

    run(main())


def test_read_timeout_counts_per_request(run: Run[None]) -> None:
    # Many quick requests spanning several timeouts, then a slow one.
    async def srv(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/slow":
            await asyncio.Event().wait()
        writer.write(response(200, b"ok"))
        return True

    # A timeout of 0.5 s: a shared, loaded machine may stall a fast request 0.1 s.
    async def main() -> None:
        async with HttpTestServer(srv) as server, HttpClient(server.url(), read_timeout=0.5) as c:
            deadline = time.monotonic() + 1.6
            while time.monotonic() < deadline:
                assert (await c.get("/fast")).status == 200
            started = time.monotonic()
            with pytest.raises(HttpReadTimeout):
                await c.get("/slow")
            assert 0.45 <= time.monotonic() - started < 3.0

    run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_connect_refused(run: Run[None]) -> None:
    async def main() -> None:
        url = f"http://127.0.0.1:{free_port()}/x"
        async with HttpClient(url) as client:
            with pytest.raises(HttpConnectError, match=r"cannot connect to http://127\.0\.0\.1"):
                await client.get()

    run(main())


def test_connect_timeout(run: Run[None]) -> None:
    # A listening socket whose accept queue is full drops new SYNs.
    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            fillers = []
            try:
                for _ in range(4):
                    filler = socket.socket()
                    filler.setblocking(False)
                    fillers.append(filler)
                    filler.connect_ex(("127.0.0.1", port))
                url = f"http://127.0.0.1:{port}/"
                async with HttpClient(url, connect_timeout=0.3) as client:
                    started = time.monotonic()
                    with pytest.raises(HttpConnectTimeout, match=r"connect timeout of 0\.3 s"):
                        await client.get()
                    assert time.monotonic() - started < 1.3
            finally:
                for filler in fillers:
                    filler.close()

    run(main())


# TLS.


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def test_tls(run: Run[None], certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        async with HttpTestServer(ssl=server_ctx) as server:
            assert server.url().startswith("https://")
            async with HttpClient(server.url("/secure"), ssl=client_ctx) as client:
                for i in range(20):
                    resp = await client.post(body=f"secret {i}")
                    assert resp.body == f"secret {i}".encode()
                assert (await client.head()).status == 200
                assert (await client.get()).header("x-target") == "/secure"
            assert server.connections == 1
            # The default context does not trust the self-signed certificate.
            async with HttpClient(server.url(), connect_timeout=5) as client:
                with pytest.raises(HttpConnectError, match="TLS handshake with https://127"):
                    await client.get()

    run(main())


# Concurrency.


def test_concurrent_clients_do_not_mix_responses(run: Run[None]) -> None:
    async def srv(request: Request, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(random.uniform(0, 0.005))
        writer.write(response(200, request.headers["x-id"].encode()))
        return True

    async def one_client(server: HttpTestServer, n: int) -> list[str]:
        async with HttpClient(server.url(), headers={"X-Client": str(n)}) as client:
            got = []
            for i in range(20):
                resp = await client.get("/id", headers={"X-Id": f"{n}-{i}"})
                got.append(resp.body.decode())
            return got

    async def main() -> None:
        async with HttpTestServer(srv) as server:
            results = await asyncio.gather(*(one_client(server, n) for n in range(50)))
            for n, got in enumerate(results):
                assert got == [f"{n}-{i}" for i in range(20)]
            assert server.connections == 50

    run(main())


def test_concurrent_requests_on_one_client_are_refused(run: Run[None]) -> None:
    async def main() -> None:
        async with HttpTestServer() as server, HttpClient(server.url()) as client:
            first = asyncio.create_task(client.get("/a"))
            await asyncio.sleep(0)
            with pytest.raises(HttpClientBusy, match="another request is in flight"):
                await client.get("/b")
            assert (await first).status == 200
            assert (await client.get("/c")).status == 200

    run(main())


# Requests.


def test_request_bodies(run: Run[None]) -> None:
    async def main() -> None:
        async with HttpTestServer() as server, HttpClient(server.url("/base")) as client:
            resp = await client.post(body=b"\x00\xffraw")
            assert (resp.body, resp.header("x-content-type")) == (b"\x00\xffraw", "")
            resp = await client.put("/p", body="héllo")
            assert (resp.body, resp.header("x-method")) == ("héllo".encode(), "PUT")
            resp = await client.patch(json={"a": [1, 2], "b": None})
            assert resp.json() == {"a": [1, 2], "b": None}
            assert resp.header("x-content-type") == "application/json"
            resp = await client.post(json=[1], headers={"Content-Type": "application/x+json"})
            assert (resp.body, resp.header("x-content-type")) == (b"[1]", "application/x+json")
            resp = await client.delete("/d", body=bytearray(b"ba"))
            assert (resp.body, resp.header("x-method")) == (b"ba", "DELETE")
            assert (await client.request("POST")).header("x-content-length") == "0"
            resp = await client.get()
            assert resp.header("x-content-length") == ""
            assert resp.header("x-host") == f"127.0.0.1:{server.port}"
            assert resp.header("x-target") == "/base"
            resp = await client.request("options", server.url("/full?q=1#frag"))
            assert (resp.header("x-method"), resp.header("x-target")) == ("OPTIONS", "/full?q=1")
            resp = await client.get("/h", headers={"Host": "example.test", "X-A": "b"})
            assert resp.header("x-host") == "example.test"
            assert server.requests[-1].headers["x-a"] == "b"
            assert server.connections == 1

    run(main())


def test_client_headers_sent_on_every_request(run: Run[None]) -> None:
    async def main() -> None:
        async with HttpTestServer() as server:
            async with HttpClient(server.url(), headers={"Authorization": "Bearer t"}) as client:
                await client.get("/1")
                await client.post("/2", json={})
                await client.get("/3", headers={"authorization": "other"})
            auth = [r.headers["authorization"] for r in server.requests]
            assert auth == ["Bearer t", "Bearer t", "other"]

    run(main())


def test_response_text_and_json(run: Run[None]) -> None:
    async def main() -> None:
        content_type = ("Content-Type", "text/plain; charset=latin-1")
        latin = handler(lambda r: response(200, "é".encode("latin-1"), [content_type]))
        async with HttpTestServer(latin) as server, HttpClient(server.url()) as client:
            resp = await client.get()
            assert resp.text() == "é"
            with pytest.raises(ValueError):
                resp.json()
            assert "200" in repr(resp)

    run(main())


# Caller errors.


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://h/x", "scheme must be http:// or https://"),
        ("http:///x", "no host"),
        ("127.0.0.1:80", "scheme must be"),
        ("http://h:99999/", "invalid URL"),
        ("http://u:p@h/", "credentials"),
        ("http://h/a b", "percent-encoded"),
    ],
)
def test_bad_base_url(url: str, message: str) -> None:
    with pytest.raises(HttpInvalidUrl, match=message) as info:
        HttpClient(url)
    assert isinstance(info.value, HttpLocalError)
    assert info.value.url == url


def test_caller_errors(run: Run[None]) -> None:
    async def main() -> None:
        async with HttpTestServer() as server:
            client = HttpClient(server.url())
            with pytest.raises(HttpInvalidRequest, match="body= or json=, not both"):
                await client.post(body=b"x", json={})
            with pytest.raises(HttpInvalidRequest, match="invalid HTTP method 'GE T'"):
                await client.request("GE T")
            with pytest.raises(HttpInvalidRequest, match="set automatically"):
                await client.get(headers={"Content-Length": "3"})
            with pytest.raises(HttpInvalidRequest, match="control characters"):
                await client.get(headers={"X": "a\r\nInjected: 1"})
            with pytest.raises(HttpInvalidRequest, match="body must be bytes or str"):
                await client.post(body=123)  # type: ignore[arg-type]
            with pytest.raises(HttpInvalidUrl, match="not on this client's origin"):
                await client.get("http://example.com/")
            with pytest.raises(HttpInvalidUrl, match="must start with '/'"):
                await client.get("relative")
            with pytest.raises(HttpInvalidUrl, match="percent-encoded"):
                await client.get("/a b")
            assert server.connections == 0  # nothing was sent
            assert (await client.get()).status == 200
            await client.close()
            with pytest.raises(HttpClientClosed, match=r"closed client for http://127"):
                await client.get()
            await client.close()  # twice is fine

    run(main())


def test_close_during_request(run: Run[None]) -> None:
    async def never(request: Request, writer: asyncio.StreamWriter) -> bool:
        await asyncio.Event().wait()
        return False

    async def main() -> None:
        async with HttpTestServer(never) as server:
            client = HttpClient(server.url())
            task = asyncio.create_task(client.get("/x"))
            while not server.requests:
                await asyncio.sleep(0.001)
            await client.close()
            with pytest.raises(HttpClientClosed, match="was closed while GET"):
                await task

    run(main())


def test_constructor_needs_no_loop() -> None:
    client = HttpClient("https://example.test/api?x=1")
    assert client.url == "https://example.test/api?x=1"
    with pytest.raises(HttpLocalError, match="timeouts must be > 0"):
        HttpClient("http://h/", read_timeout=0)


# Figures for the load tester: statuses and bytes counted into protocol.calls.current_op.

# answer(target, connection number) -> (bytes to write, keep the connection open)
Answer = Callable[[str, int], tuple[bytes, bool]]


class RawServer(HttpTestServer):
    """Counts the bytes of each request as read off the socket and answers it with
    exactly the bytes `answer` gives, counting those too: figures to check the client's
    against, whatever the client's formatting."""

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer
        self.read = 0
        self.written = 0

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        connection: int) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
            body = await reader.readexactly(int(length[1])) if length else b""
            self.read += len(head) + len(body)
            data, keep_open = self.answer(head.split(b" ")[1].decode(), connection)
            writer.write(data)
            self.written += len(data)
            await writer.drain()
            if not keep_open:
                break


FIGURE_ANSWERS = {
    "/ok": response(200, b"hello"),
    "/missing": response(404, b"not found", [("Content-Type", "text/plain")]),
    "/boom": response(500),
    "/chunked": response(200, bytes(range(256)) * 12, chunked=True, chunk_size=1000),
    "/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",  # HEAD: no body follows
    "/post": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + response(201, b"made"),
}


def test_figures_count_every_status_and_the_exact_bytes_of_a_call(run: Run[None]) -> None:
    def answer(target: str, connection: int) -> tuple[bytes, bool]:
        if target == "/eof":
            return response(200, b"until the close", length=False), False
        return FIGURE_ANSWERS[target], True

    async def main() -> None:
        op = OpStats("Http")
        current_op.set(op)
        async with RawServer(answer) as server, HttpClient(server.url()) as client:
            for _ in range(2):
                assert (await client.get("/ok")).body == b"hello"
            assert (await client.get("/missing")).status == 404
            assert (await client.get("/boom")).status == 500
            assert len((await client.get("/chunked")).body) == 3072
            assert (await client.head("/head")).status == 200
            assert (await client.post("/post", body=b"x" * 100)).status == 201
            assert (await client.get("/eof")).body == b"until the close"
            assert (await client.get("/ok")).status == 200  # on a fresh connection
            assert server.connections == 2
        assert op.statuses == {200: 6, 201: 1, 404: 1, 500: 1}
        assert op.sent == server.read  # every request, its body included
        assert op.received == server.written  # status lines, headers, bodies, the 103
        assert (op.ok, op.fail, op.hist.total) == (0, 0, 0)  # calls are the scheduler's

    run(main())


def test_figures_go_only_to_the_current_tasks_call(run: Run[None]) -> None:
    async def main() -> None:
        op = OpStats("Http")

        async def in_a_call(client: HttpClient) -> None:
            current_op.set(op)  # this task's context only
            assert (await client.get("/missing")).status == 404

        async with RawServer(lambda t, c: (FIGURE_ANSWERS[t], True)) as server:
            async with HttpClient(server.url()) as client:
                # connected outside any call: the figures follow the request, not the
                # connection
                assert (await client.get("/ok")).status == 200
                await asyncio.create_task(in_a_call(client))
                assert (await client.get("/boom")).status == 500
                assert current_op.get() is None
            assert server.connections == 1
        assert op.statuses == {404: 1}
        assert 0 < op.sent < server.read and 0 < op.received < server.written
        assert op.received == len(FIGURE_ANSWERS["/missing"])

    run(main())


def test_a_request_without_a_response_counts_only_its_written_bytes(run: Run[None]) -> None:
    truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"

    retried: list[int] = []

    def answer(target: str, connection: int) -> tuple[bytes, bool]:
        if target == "/hang":
            return b"", True  # never answers: the read timeout ends it
        if target == "/truncated":
            return truncated, False
        if target == "/retry" and not retried:
            retried.append(connection)
            return b"", False  # closed before any byte on a reused connection: re-sent
        return FIGURE_ANSWERS["/ok"], True

    async def main() -> None:
        op = OpStats("Http")
        current_op.set(op)
        async with RawServer(answer) as server:
            async with HttpClient(server.url(), read_timeout=1.0) as client:
                with pytest.raises(HttpReadTimeout):
                    await client.get("/hang")
                assert op.sent == server.read > 0
                assert (op.received, op.statuses) == (0, {})
                with pytest.raises(HttpConnectionClosed, match="truncated response"):
                    await client.get("/truncated")
                assert op.sent == server.read
                assert (op.received, op.statuses) == (0, {})
            async with HttpClient(server.url()) as client:
                before = server.read
                assert (await client.get("/ok")).status == 200
                one = server.read - before
                assert (await client.get("/retry")).status == 200
                assert server.read - before == one + 2 * (one + 3)  # /ok, /retry twice
                assert server.connections == 4
                assert op.sent == server.read  # both writes of the re-sent request
                assert op.statuses == {200: 2}
                assert op.received == 2 * len(FIGURE_ANSWERS["/ok"])
        async with HttpClient(f"http://127.0.0.1:{free_port()}/x") as client:
            sent = op.sent
            with pytest.raises(HttpConnectError):
                await client.get()
            assert op.sent == sent  # nothing was written

    run(main())


def test_every_distinct_status_code_is_counted_and_travels(run: Run[None]) -> None:
    """Hundreds of distinct codes under one name are all counted, and the totals still
    fit one message (a worker's final must never be refused for them)."""
    async def main() -> None:
        op = OpStats("Http")
        current_op.set(op)
        codes = range(200, 1000)
        server = RawServer(lambda t, c: (response(int(t[1:])), True))
        async with server, HttpClient(server.url()) as client:
            for code in codes:
                assert (await client.get(f"/{code}")).status == code
            assert (await client.get("/200")).status == 200
        assert sorted(op.statuses) == list(codes) and len(codes) <= MAX_STATUS_CODES
        assert op.statuses[200] == 2
        assert op.received == server.written
        assert OpStats.from_wire(op.to_wire()).statuses == op.statuses

