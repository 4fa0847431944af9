"""FixedRequest: a declared request whose calls the worker drives from the connection's
callbacks; the same figures as the same calls made through execute()."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from loadagent.scheduler import CANCELLED_AT_STOP, ClientScheduler
from protocol.client import ClientProtocol
from protocol.driven import CancelledBetweenCalls, DrivenCalls
from protocol.histogram import Histogram
from protocol.http import FixedRequest, HttpResponse
from protocol.http._fixed import FixedConnection
from protocol.stats import Totals
from tests.e2e_helpers import ROOT, Target, run_master, write_job
from tests.http_servers import HttpTestServer, Request, response

CLIENTS = 4
BODY = b'{"id": 1}'


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 20))


def fixed(method: str = "GET", **attrs: Any) -> type[FixedRequest]:
    return type("Fixed", (FixedRequest,), {"method": method, **attrs})


class Counted:
    """FixedRequest.execute, counted: the calls that did not go through a drive."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.last_start = 0  # perf_counter_ns
        original = FixedRequest.execute

        async def execute(client: FixedRequest) -> None:
            self.calls += 1
            self.last_start = time.perf_counter_ns()
            await original(client)

        # the class attribute itself: FixedRequest's subclasses stay drivable
        monkeypatch.setattr(FixedRequest, "execute", execute)


STOPPED_AT: list[int] = []  # perf_counter_ns just before load()'s latest stop()


async def load(cls: type[ClientProtocol], url: str, totals: Totals, seconds: float = 0.3,
               wait: float = 0.0, grace: float = 5.0) -> ClientScheduler:
    """CLIENTS clients of ``cls`` for ``seconds``, stopped with ``grace``, shut down."""
    sched = ClientScheduler(cls, url, wait, totals)
    sched.start(asyncio.get_running_loop().time(), [0.0] * CLIENTS)
    await asyncio.sleep(seconds)
    STOPPED_AT[:] = [time.perf_counter_ns()]
    await sched.stop(grace)
    await sched.shutdown_clients(2.0)
    assert sched.running == 0
    return sched


ANSWER = response(200, b"ok", [("Server", "test")])


async def ok(request: Request, writer: asyncio.StreamWriter) -> bool:
    writer.write(ANSWER)
    return True


def test_driven_calls_are_counted_as_the_call_loop_counts_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    counted = Counted(monkeypatch)
    totals = Totals()
    cls = fixed("POST", body=BODY, headers={"Content-Type": "application/json"})
    assert cls.drivable()

    async def main() -> None:
        async with HttpTestServer(ok) as server:
            sched = await load(cls, server.url("/items"), totals)
            requests = server.requests
        # every request was answered (the stop let the calls in flight finish) and counted
        st = totals.op("Fixed")
        assert st.ok == len(requests) > 20 * CLIENTS and st.fail == 0
        assert {(r.method, r.target, r.body) for r in requests} == {("POST", "/items", BODY)}
        assert requests[-1].headers["content-type"] == "application/json"
        # one call each through execute() (it opens the connection); the others driven
        assert counted.calls == CLIENTS
        assert st.statuses == {200: st.ok}
        assert st.received == st.ok * len(ANSWER)
        head = requests[0]
        one = len(b"POST /items HTTP/1.1\r\n") + sum(
            len(f"{k}: {v}\r\n") for k, v in head.headers.items()) + 2 + len(BODY)
        assert st.sent == st.ok * one
        assert sum(st.hist.counts.values()) == st.ok
        assert 0 < st.min_ns <= st.sum_ns // st.ok <= st.max_ns
        assert sched.grace.finished == CLIENTS and sched.grace.cancelled == 0
        assert sched.last_call_end_ns > STOPPED_AT[0]  # the calls in flight at the stop

    run(main)


def test_a_non_2xx_fails_the_call_with_the_error_execute_gives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every third response a 503: driven, and through execute() (a wait: not driven)."""
    seen = 0

    async def some_fail(request: Request, writer: asyncio.StreamWriter) -> bool:
        nonlocal seen
        seen += 1
        writer.write(response(503 if seen % 3 == 0 else 200, b"x"))
        return True

    results: list[tuple[int, set[tuple[str, str, str]], int, int]] = []
    for wait in (0.0, 0.0001):
        counted = Counted(monkeypatch)
        totals = Totals()
        seen = 0

        url = ""

        async def main(wait: float = wait, totals: Totals = totals) -> None:
            nonlocal url
            async with HttpTestServer(some_fail) as server:
                url = server.url("/x")
                await load(fixed(), url, totals, wait=wait)

        run(main)
        st = totals.op("Fixed")
        assert st.ok + st.fail == seen and st.fail == seen // 3 > 3
        assert st.statuses == {200: st.ok, 503: st.fail}
        keys = {(name, kind, text.replace(url, "URL")) for name, kind, text in totals.errors}
        results.append((counted.calls, keys, st.fail, st.ok + st.fail))
    (driven_calls, driven_keys, driven_fail, driven_all), (
        plain_calls, plain_keys, _, plain_all) = results
    assert driven_keys == plain_keys and len(driven_keys) == 1
    (key,) = driven_keys
    assert key == ("Fixed", "HttpStatusError", "GET URL returned 503 (server error)")
    # a failed call ends its drive: the next goes through execute() (unless the stop came),
    # then a drive again; with a wait, every call goes through execute()
    assert driven_fail <= driven_calls <= CLIENTS + driven_fail < driven_all
    assert plain_calls == plain_all


def test_a_server_that_closes_after_some_responses_costs_no_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection: close on every 5th response of a connection: the next call opens
    another (through execute()), and drives on."""
    counted = Counted(monkeypatch)
    totals = Totals()
    per_connection: dict[int, int] = {}

    async def closing(request: Request, writer: asyncio.StreamWriter) -> bool:
        n = per_connection[request.connection] = per_connection.get(request.connection, 0) + 1
        if n == 5:
            writer.write(response(200, b"bye", [("Connection", "close")]))
            return False
        writer.write(response(200, b"hi"))
        return True

    async def main() -> None:
        async with HttpTestServer(closing) as server:
            await load(fixed(), server.url("/"), totals)
            assert server.connections > 4 * CLIENTS
        st = totals.op("Fixed")
        assert st.fail == 0 and st.ok == sum(per_connection.values())
        # one a connection, to open it (the last ones maybe not: the stop came first);
        # every other call driven
        assert server.connections - CLIENTS <= counted.calls <= server.connections

    run(main)


@pytest.mark.parametrize(("method", "fails"), [("GET", False), ("POST", True)])
def test_a_reused_connection_closed_under_a_request_resends_only_what_may_be_resent(
        method: str, fails: bool) -> None:
    """The server drops each connection, unanswered, at its 4th request: an idempotent
    request is made again on a new connection (one call), a POST fails."""
    totals = Totals()
    per_connection: dict[int, int] = {}

    async def dropping(request: Request, writer: asyncio.StreamWriter) -> bool:
        n = per_connection[request.connection] = per_connection.get(request.connection, 0) + 1
        if n == 4:
            return False  # closed, with no byte of a response
        writer.write(response(200, b"hi"))
        return True

    async def main() -> None:
        async with HttpTestServer(dropping) as server:
            await load(fixed(method, body=b"b" if method == "POST" else None),
                       server.url("/"), totals)
            answered = len(server.requests) - sum(n >= 4 for n in per_connection.values())
            connections = server.connections
        st = totals.op("Fixed")
        dropped = sum(n >= 4 for n in per_connection.values())
        assert dropped > CLIENTS
        assert st.ok == answered
        if fails:
            assert st.fail == dropped
            assert {k[1] for k in totals.errors} == {"ClosedBeforeResponse"}  # as execute()
        else:
            # each dropped request was made again, on a new connection: the same call,
            # a success
            assert st.fail == 0 and connections >= dropped + CLIENTS - 1

    run(main)


def test_a_read_timeout_fails_the_call_and_the_next_goes_on() -> None:
    """Each connection's 3rd request is never answered; read_timeout 0.1 s."""
    totals = Totals()
    per_connection: dict[int, int] = {}

    async def silent(request: Request, writer: asyncio.StreamWriter) -> bool:
        n = per_connection[request.connection] = per_connection.get(request.connection, 0) + 1
        if n == 3:
            await asyncio.sleep(5)
        writer.write(response(200, b"hi"))
        return True

    async def main() -> None:
        async with HttpTestServer(silent) as server:
            await load(fixed(read_timeout=0.1), server.url("/"), totals, seconds=0.5,
                       grace=1.0)
        st = totals.op("Fixed")
        assert st.fail >= CLIENTS * 2 and st.ok >= 2 * st.fail - CLIENTS
        assert {k[1] for k in totals.errors} == {"HttpReadTimeout"}

    run(main)


def test_driven_calls_hanging_past_the_grace_are_cancelled_and_do_not_extend_the_run() -> None:
    totals = Totals()
    answered = last_answer_ns = 0

    async def then_hang(request: Request, writer: asyncio.StreamWriter) -> bool:
        nonlocal answered, last_answer_ns
        if answered >= 40:
            await asyncio.sleep(30)
        answered += 1
        last_answer_ns = time.perf_counter_ns()
        writer.write(response(200, b"hi"))
        return True

    async def main() -> None:
        async with HttpTestServer(then_hang) as server:
            sched = ClientScheduler(fixed(), server.url("/"), 0.0, totals)
            sched.start(asyncio.get_running_loop().time(), [0.0] * CLIENTS)
            await asyncio.sleep(0.3)
            stop_ns = time.perf_counter_ns()
            await sched.stop(0.2)
            assert sched.grace.cancelled == CLIENTS and sched.grace.finished == 0
            # the last calls that ended did so before the stop; the cancelled ones do not
            # extend the run, but the driven ones that ended do
            assert last_answer_ns < sched.last_call_end_ns <= stop_ns
            await sched.shutdown_clients(1.0)
        st = totals.op("Fixed")
        assert st.ok == answered == 40 and st.fail == CLIENTS
        assert totals.errors[("Fixed", *CANCELLED_AT_STOP)] == CLIENTS

    run(main)


def test_a_fixed_request_with_its_own_execute_or_a_wait_is_not_driven(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bodies: list[bytes] = []

    class Reads(FixedRequest):
        async def execute(self) -> None:  # reads each response: every call through here
            assert self.http is not None
            resp: HttpResponse = await self.http.get()
            bodies.append(resp.body)

    assert not Reads.drivable()
    totals = Totals()

    async def main() -> None:
        async with HttpTestServer(ok) as server:
            await load(Reads, server.url("/"), totals)
            assert totals.op("Reads").ok == len(bodies) == len(server.requests) > 20
            counted = Counted(monkeypatch)
            await load(fixed(), server.url("/"), totals, wait=0.001)
            assert counted.calls == totals.op("Fixed").ok > 20

    run(main)


def test_an_init_before_use_that_does_not_call_super_fails_the_calls_by_name() -> None:
    class Forgets(FixedRequest):
        def init_before_use(self, host: str) -> None:
            self.host = host

    totals = Totals()

    async def main() -> None:
        async with HttpTestServer(ok) as server:
            await load(Forgets, server.url("/"), totals, seconds=0.05)

    run(main)
    (key,) = totals.errors
    assert key[1] == "RuntimeError" and "super().init_before_use(host)" in key[2]


def test_examples_http_fixed_through_loadmaster_counts_what_the_target_served(
        tmp_path: Path, tag: str) -> None:
    target = Target(tag, fail_every=4)
    try:
        conf = write_job(tmp_path, {"host": target.url, "users": 8, "run_time": 2,
                                    "worker": 2, "method": "POST"},
                         client=(ROOT / "examples" / "http_fixed.py").read_text(),
                         client_path="examples/http_fixed.py")
        r = run_master(tmp_path, conf, tag)
        served = target.counts()
    finally:
        target.stop()
    assert r.code == 0, r.stderr
    assert served["ok"] > 100 and served["fail"] > 30
    assert r.final_int("success count") == served["ok"]
    assert r.final_int("fail count") == served["fail"]
    assert "HttpStatusError" in r.stdout


def test_no_call_starts_after_the_stop_when_every_drive_ends_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every response a 503: each drive ends at its first call, the next goes through
    execute() after a turn of the loop; a stop during that turn starts no call."""
    for _ in range(3):
        counted = Counted(monkeypatch)
        totals = Totals()

        async def unavailable(request: Request, writer: asyncio.StreamWriter) -> bool:
            writer.write(response(503, b"later"))
            return True

        async def main(totals: Totals = totals) -> None:
            async with HttpTestServer(unavailable) as server:
                sched = await load(fixed(), server.url("/"), totals, seconds=0.2)
                assert sched.grace.finished <= CLIENTS and sched.grace.cancelled == 0
                assert len(server.requests) == totals.op("Fixed").fail

        run(main)
        assert counted.calls > 10 * CLIENTS
        assert counted.last_start < STOPPED_AT[0]


def test_head_requests_are_driven_and_counted_as_execute_counts_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A HEAD response ends at its head, whatever its Content-Length says."""
    counted = Counted(monkeypatch)
    totals = Totals()
    head = response(200, b"", [("Content-Length", "100")], length=False)

    async def heads(request: Request, writer: asyncio.StreamWriter) -> bool:
        assert request.method == "HEAD"
        writer.write(head)
        return True

    async def main() -> None:
        async with HttpTestServer(heads) as server:
            await load(fixed("HEAD"), server.url("/"), totals)
            st = totals.op("Fixed")
            assert st.ok == len(server.requests) > 20 * CLIENTS and st.fail == 0
            assert st.statuses == {200: st.ok} and st.received == st.ok * len(head)
        assert counted.calls == CLIENTS

    run(main)


class FakeTransport(asyncio.Transport):
    """Takes writes and does nothing: a response is fed to the protocol by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


async def _driving(stopping: bool) -> tuple[FixedRequest, FixedConnection, FakeTransport,
                                              DrivenCalls, asyncio.Task[int]]:
    """A FixedRequest driving a connection over a fake transport, its first request
    written, the drive's task waiting for the response."""
    client = fixed()()
    client.init_before_use("http://127.0.0.1:9/x")
    assert client.http is not None
    conn = FixedConnection(asyncio.get_running_loop(), "127.0.0.1:9", 30.0)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.reused = True
    client.http._conn = conn
    st = Totals().op("Fixed")
    assert isinstance(st.hist, Histogram)
    calls = DrivenCalls(st, st.hist.rows(), False, lambda: None)
    calls.stopping = stopping
    task = asyncio.get_running_loop().create_task(client.drive(calls, time.perf_counter_ns()))
    await asyncio.sleep(0)
    assert len(transport.written) == 1  # the first request, written
    return client, conn, transport, calls, task


def test_a_response_after_the_drive_was_cancelled_is_not_recorded() -> None:
    """As through execute(): a call whose response comes after its cancellation (in the
    same turn of the loop, before its task resumes) counts as cancelled, not a success."""

    async def main() -> None:
        _, conn, transport, calls, task = await _driving(stopping=False)
        task.cancel()
        conn.data_received(ANSWER)  # the response, before the task runs again
        with pytest.raises(asyncio.CancelledError) as raised:
            await task
        assert not isinstance(raised.value, CancelledBetweenCalls)  # a call in flight
        assert calls.st.ok == 0 and not calls.st.statuses and calls.st.received == 0
        assert transport.aborted and len(transport.written) == 1  # no next request

    run(main)


def test_a_drive_cancelled_after_it_ended_says_no_call_was_in_flight() -> None:
    """At the stop the call in flight ends the drive, recorded; a cancellation that comes
    before the drive's task resumes finds no call in flight."""

    async def main() -> None:
        _, conn, transport, calls, task = await _driving(stopping=True)
        conn.data_received(ANSWER)  # recorded; the drive ends: the stop came
        task.cancel()
        with pytest.raises(CancelledBetweenCalls):
            await task
        assert calls.st.ok == 1 and calls.st.statuses == {200: 1}
        assert calls.ended > 0  # the end of that call, for the run time
        assert not transport.aborted and len(transport.written) == 1

    run(main)


def test_a_json_request_is_driven_as_http_client_sends_json(
        monkeypatch: pytest.MonkeyPatch) -> None:
    counted = Counted(monkeypatch)
    totals = Totals()

    async def main() -> None:
        async with HttpTestServer(ok) as server:
            await load(fixed("PUT", json={"id": 1, "tags": ["a"]}), server.url("/j"), totals)
            seen = {(r.method, r.target, r.headers["content-type"], r.body)
                    for r in server.requests}
            assert seen == {("PUT", "/j", "application/json", b'{"id":1,"tags":["a"]}')}
            assert totals.op("Fixed").ok == len(server.requests) > 20 * CLIENTS
        assert counted.calls == CLIENTS  # then driven

    run(main)


def test_body_and_json_both_fail_every_call_by_name() -> None:
    totals = Totals()

    async def main() -> None:
        async with HttpTestServer(ok) as server:
            await load(fixed("POST", body=b"x", json={"a": 1}), server.url("/"), totals,
                       seconds=0.05)
            assert not server.requests

    run(main)
    (key,) = totals.errors
    assert key[1] == "HttpInvalidRequest" and "give body= or json=, not both" in key[2]
