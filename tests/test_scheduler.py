"""The worker's client scheduler: the timed call loop, failures, fairness, stop and abort."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from loadagent import scheduler
from loadagent.scheduler import (
    CANCELLED_AT_STOP,
    HATCH_BATCH,
    RETURNED_FALSE,
    YIELD_EVERY,
    Budget,
    ClientScheduler,
)
from protocol.calls import current_op
from protocol.client import ClientProtocol
from protocol.histogram import bucket_index
from protocol.http import HttpClient
from protocol.stats import Totals
from tests.http_servers import HttpTestServer, Request, response


def run(main: Callable[[], Coroutine[Any, Any, None]], loop: str = "uvloop") -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(main(), 20))


class Noop(ClientProtocol):
    async def execute(self) -> None:
        return None


def budget() -> Budget:
    """A share of iterations that does not run out: the shaped call loop, no pause."""
    return Budget(10**12, lambda: None)


@pytest.mark.parametrize("shaped", [False, True], ids=["call loop", "shaped loop"])
@pytest.mark.parametrize("step", [0, 1, 127, 128, 255, 256, 257, 1000, 65_537,
                                  123_456_789, 2**40 + 17])
def test_the_inlined_bucket_formula_equals_bucket_index(
        monkeypatch: pytest.MonkeyPatch, step: int, shaped: bool) -> None:
    # every read of the clock advances it by `step`, so every call lasts exactly `step`
    # (the loops read it once a call: a call's end is the next one's start)
    ticks: Iterator[int] = itertools.count(0, step)
    monkeypatch.setattr("loadagent.scheduler.time.perf_counter_ns", lambda: next(ticks))
    totals = Totals()

    async def main() -> None:
        sched = ClientScheduler(Noop, "h", 0.0, totals, budget=budget() if shaped else None)
        sched.start(asyncio.get_running_loop().time(), [0.0])
        await asyncio.sleep(0.05)
        await sched.stop(1.0)

    run(main)
    st = totals.op("Noop")
    assert st.ok > 100
    assert st.hist.counts == {bucket_index(step): st.ok}
    assert st.sum_ns == step * st.ok and st.min_ns == st.max_ns == step


def test_a_client_class_may_set_any_attribute_or_declare_slots() -> None:
    class Plain(ClientProtocol):
        def __init__(self) -> None:
            self.session = "made in __init__"

    class Slotted(ClientProtocol):
        __slots__ = ("session",)

    plain = Plain()
    plain.other = 1  # type: ignore[attr-defined]
    assert vars(plain) == {"session": "made in __init__", "other": 1}
    slotted = Slotted()
    slotted.session = "a slot"
    assert not hasattr(slotted, "__dict__")  # the base adds none


class Flaky(ClientProtocol):
    n = 0

    async def execute(self) -> bool | None:
        Flaky.n += 1
        if Flaky.n % 3 == 0:
            raise ConnectionResetError("peer reset")
        return Flaky.n % 3 != 1  # False (a failure) on every third call


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_raising_and_returning_false_are_failures_grouped_by_error(loop: str) -> None:
    totals = Totals()
    Flaky.n = 0

    async def main() -> None:
        sched = ClientScheduler(Flaky, "h", 0.0, totals)
        sched.start(asyncio.get_running_loop().time(), [0.0])
        await asyncio.sleep(0.05)
        await sched.stop(1.0)

    run(main, loop)
    st = totals.op("Flaky")
    assert st.ok + st.fail == Flaky.n
    assert totals.errors[("Flaky", "ConnectionResetError", "peer reset")] == Flaky.n // 3
    assert totals.errors[("Flaky", *RETURNED_FALSE)] == (Flaky.n + 2) // 3
    assert st.ok == st.hist.total


def test_a_client_that_never_suspends_does_not_starve_the_loop() -> None:
    lateness: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(10):
            before = loop.time()
            await asyncio.sleep(0.01)
            lateness.append(loop.time() - before - 0.01)

    async def main() -> None:
        sched = ClientScheduler(Noop, "h", 0.0, Totals())
        sched.start(asyncio.get_running_loop().time(), [0.0] * 20)
        await ticker()
        await sched.stop(1.0)

    run(main)
    assert len(lateness) == 10
    assert max(lateness) < 0.05  # yields every few calls, so timers still fire


class Slow(ClientProtocol):
    delay = 0.2

    async def execute(self) -> None:
        await asyncio.sleep(self.delay)


def test_stop_lets_running_calls_finish_within_the_grace_then_cancels() -> None:
    totals = Totals()

    async def main() -> None:
        Slow.delay = 0.2
        sched = ClientScheduler(Slow, "h", 0.0, totals)
        sched.start(asyncio.get_running_loop().time(), [0.0] * 5)
        await asyncio.sleep(0.1)
        await sched.stop(1.0)  # the calls in flight end at 0.2 s
        assert totals.op("Slow").ok == 5 and totals.op("Slow").fail == 0

        Slow.delay = 30
        sched = ClientScheduler(Slow, "h", 0.0, totals)
        sched.start(asyncio.get_running_loop().time(), [0.0] * 5)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await sched.stop(0.2)
        assert time.monotonic() - started < 2

    run(main)
    assert totals.op("Slow").fail == 5
    assert totals.errors[("Slow", *CANCELLED_AT_STOP)] == 5


@pytest.mark.parametrize("how", ["stop", "abort"])
@pytest.mark.parametrize("shaped", [False, True], ids=["call loop", "shaped loop"])
def test_clients_that_never_suspend_end_at_a_stop_or_abort_between_calls(
        how: str, shaped: bool) -> None:
    """Between calls a client is only ever at a turn of the loop (not registered as idle):
    the stop is seen there, no call starts after it, and none is counted as cancelled."""
    totals = Totals()
    clients = 8

    async def main() -> None:
        sched = ClientScheduler(Noop, "h", 0.0, totals, budget=budget() if shaped else None)
        sched.start(asyncio.get_running_loop().time(), [0.0] * clients)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        if how == "abort":
            sched.abort("test")
        await sched.stop(10.0)
        assert time.monotonic() - started < 1.0  # not the grace
        made = totals.op("Noop").ok
        await asyncio.sleep(0.05)
        assert totals.op("Noop").ok == made  # no call after the stop
        assert sched.running == 0 and not sched._tasks
        assert sched.grace.cancelled == 0 and sched.grace.finished == 0
        assert sched.last_call_end_ns > 0

    run(main)
    st = totals.op("Noop")
    assert st.ok > 1000 and st.fail == 0 and totals.errors == {}
    assert st.hist.total == st.ok


def test_abort_cancels_at_once_and_says_why() -> None:
    totals = Totals()

    async def main() -> None:
        Slow.delay = 30
        sched = ClientScheduler(Slow, "h", 0.0, totals)
        sched.start(asyncio.get_running_loop().time(), [0.0] * 3)
        await asyncio.sleep(0.1)
        sched.abort("master lost")
        await sched.stop(0.0)

    run(main)
    assert totals.errors[("Slow", "Cancelled", "call cancelled by an abort: master lost")] == 3


class BadInit(ClientProtocol):
    def init_before_use(self, host: str) -> None:
        raise ValueError(f"cannot reach {host}")


class BadConstructor(ClientProtocol):
    def __init__(self) -> None:
        raise RuntimeError("constructor broke")


@pytest.mark.parametrize("cls, error", [
    (BadInit, ("BadInit", "ValueError", "cannot reach h")),
    (BadConstructor, ("BadConstructor", "RuntimeError", "constructor broke")),
])
def test_a_client_that_cannot_start_is_a_counted_failure(
        cls: type[ClientProtocol], error: tuple[str, str, str]) -> None:
    totals = Totals()

    async def main() -> None:
        sched = ClientScheduler(cls, "h", 0.0, totals)
        sched.start(asyncio.get_running_loop().time(), [0.0] * 4)
        await asyncio.sleep(0.05)
        await sched.stop(1.0)
        assert sched.running == 0

    run(main)
    assert totals.errors[error] == 4
    assert totals.op(error[0]).fail == 4


# -- the stop grace, started clients, hatching many at once --------------------------------


class SlowOrIdle(ClientProtocol):
    """Even clients make 0.2 s calls; odd ones return at once, then sleep ``wait_time``."""

    made = 0

    def __init__(self) -> None:
        self.slow = SlowOrIdle.made % 2 == 0
        SlowOrIdle.made += 1

    async def execute(self) -> None:
        if self.slow:
            await asyncio.sleep(0.2)


def test_grace_counts_the_calls_in_flight_at_the_stop_that_finished() -> None:
    totals = Totals()
    SlowOrIdle.made = 0
    stop_ns = 0

    async def main() -> None:
        nonlocal stop_ns
        # a 30 s wait: each odd client is asleep between calls at the stop, not in flight
        sched = ClientScheduler(SlowOrIdle, "h", 30.0, totals)
        sched.start(asyncio.get_running_loop().time(), [0.0] * 6)
        await asyncio.sleep(0.1)
        assert sched.started == 6
        stop_ns = time.perf_counter_ns()
        await sched.stop(5.0)
        assert sched.grace.finished == 3  # the three slow calls, not the sleeping clients
        assert sched.grace.cancelled == 0
        assert 0.02 < sched.grace.seconds < 2.0  # they ended ~0.1 s after the stop
        # the calls that finished in the grace extend the run up to their end
        assert sched.last_call_end_ns > stop_ns

    run(main)
    st = totals.op("SlowOrIdle")
    assert st.ok == 6 and st.fail == 0


class FastThenHang(ClientProtocol):
    """One quick successful call, then a call that never ends."""

    def __init__(self) -> None:
        self.calls = 0

    async def execute(self) -> None:
        self.calls += 1
        if self.calls > 1:
            await asyncio.Event().wait()


def test_calls_hanging_past_the_grace_are_cancelled_and_do_not_extend_the_run() -> None:
    totals = Totals()

    async def main() -> None:
        sched = ClientScheduler(FastThenHang, "h", 0.0, totals)
        sched.start(asyncio.get_running_loop().time(), [0.0] * 4)
        await asyncio.sleep(0.1)
        stop_ns = time.perf_counter_ns()
        await sched.stop(0.3)
        assert sched.grace.cancelled == 4
        assert sched.grace.finished == 0
        assert 0.25 <= sched.grace.seconds < 1.5
        # the first calls ended before the stop; the cancelled ones do not count
        assert 0 < sched.last_call_end_ns <= stop_ns

    run(main)
    st = totals.op("FastThenHang")
    assert st.ok == 4 and st.fail == 4
    assert totals.errors[("FastThenHang", *CANCELLED_AT_STOP)] == 4


class InitFailsEveryThird(ClientProtocol):
    made = 0

    def __init__(self) -> None:
        self.index = InitFailsEveryThird.made
        InitFailsEveryThird.made += 1

    async def init_before_use(self, host: str) -> None:
        await asyncio.sleep(0)
        if self.index % 3 == 0:
            raise ConnectionRefusedError(f"{host} refused client {self.index}")

    async def execute(self) -> None:
        await asyncio.sleep(0.01)


def test_started_counts_the_clients_whose_init_returned() -> None:
    totals = Totals()
    InitFailsEveryThird.made = 0

    async def main() -> None:
        sched = ClientScheduler(InitFailsEveryThird, "h", 0.0, totals)
        sched.start(asyncio.get_running_loop().time(), [0.0] * 9)
        await asyncio.sleep(0.1)
        assert sched.started == 6  # clients 0, 3 and 6 failed their init
        assert sched.running == 6
        await sched.stop(1.0)
        assert sched.started == 6

    run(main)
    assert sum(c for (_, etype, _), c in totals.errors.items()
               if etype == "ConnectionRefusedError") == 3


def test_many_clients_due_at_once_are_started_while_the_loop_keeps_turning() -> None:
    clients = 5_000
    turns_while_starting = 0

    async def main() -> None:
        nonlocal turns_while_starting
        Slow.delay = 30  # started clients wait in their first call: only hatching costs
        sched = ClientScheduler(Slow, "h", 0.0, Totals())
        sched.start(asyncio.get_running_loop().time(), [0.0] * clients)
        # a task that wants the loop as often as it can, like the publisher's timer
        while sched.started < clients:
            if sched.started > 0:
                turns_while_starting += 1
            await asyncio.sleep(0)
        await sched.stop(0.0)
        assert sched.grace.cancelled == clients

    run(main)
    # started in batches of HATCH_BATCH, the loop turning between them; all at once, the
    # other task would get no turn between the first client started and the last
    assert turns_while_starting >= clients // HATCH_BATCH // 2, turns_while_starting


def test_shutdown_runs_only_for_clients_whose_init_returned() -> None:
    """A client whose init_before_use raised is never shut down (as __exit__ is not called
    after a failed __enter__); every other client is, once."""
    shut: list[int] = []

    class HalfFailing(ClientProtocol):
        made = 0

        def init_before_use(self, host: str) -> None:
            HalfFailing.made += 1
            self.number = HalfFailing.made
            if self.number % 2 == 0:
                raise ConnectionError("init failed")

        async def execute(self) -> None:
            await asyncio.sleep(0.001)

        async def shutdown(self) -> None:
            shut.append(self.number)

    totals = Totals()

    async def main() -> None:
        sched = ClientScheduler(HalfFailing, "h", 0.0, totals)
        sched.start(asyncio.get_running_loop().time(), [0.0] * 6)
        await asyncio.sleep(0.05)
        await sched.stop(1.0)
        await sched.shutdown_clients(1.0)
        assert sched.started == 3

    run(main)
    assert sorted(shut) == [1, 3, 5]
    assert totals.op("HalfFailing").fail >= 3  # the three failed inits are counted
    assert not any("shutdown" in key[0] for key, _ in totals.iter_errors())


@pytest.mark.parametrize("shaped", [False, True], ids=["call loop", "shaped loop"])
def test_a_client_that_blocks_the_loop_yields_after_each_call(shaped: bool) -> None:
    """execute() that never suspends but holds the loop for ms at a time gives the loop a
    turn after every call (not every YIELD_EVERY calls): the publisher and the stop
    still run on time. So does the shaped loop (iterations, no wait)."""
    calls = 0

    class Blocking(ClientProtocol):
        async def execute(self) -> None:
            nonlocal calls
            calls += 1
            time.sleep(0.006)  # holds the loop longer than YIELD_AFTER_NS

    between: list[int] = []

    async def main() -> None:
        sched = ClientScheduler(Blocking, "h", 0.0, Totals(),
                                budget=budget() if shaped else None)
        sched.start(asyncio.get_running_loop().time(), [0.0, 0.0])
        seen = calls
        for _ in range(40):
            await asyncio.sleep(0)
            between.append(calls - seen)
            seen = calls
        await sched.stop(1.0)

    run(main)
    # two clients, each yields after one call: at most two calls between the probe's turns
    assert max(between) <= 2 and sum(between) >= 20


@pytest.mark.parametrize("shaped", [False, True], ids=["call loop", "shaped loop"])
def test_a_call_that_waits_long_does_not_add_yields(monkeypatch: pytest.MonkeyPatch,
                                                    shaped: bool) -> None:
    """A call that takes long because it waited (I/O, a busy loop) gave the loop turns:
    the scheduler adds no turn of its own after it, only the one every YIELD_EVERY."""
    yields = 0
    real_turn = scheduler._turn

    def counting_turn() -> Awaitable[None]:
        nonlocal yields
        yields += 1
        return real_turn()

    class Waiting(ClientProtocol):
        async def execute(self) -> None:
            await asyncio.sleep(0.006)  # longer than YIELD_AFTER_NS, but waiting

    totals = Totals()
    monkeypatch.setattr("loadagent.scheduler._turn", counting_turn)

    async def main() -> None:
        sched = ClientScheduler(Waiting, "h", 0.0, totals, budget=budget() if shaped else None)
        sched.start(asyncio.get_running_loop().time(), [0.0] * 20)
        await asyncio.sleep(0.3)
        await sched.stop(1.0)

    run(main)
    calls = totals.op("Waiting").ok
    assert calls > 200
    # the periodic turns only, each client's every YIELD_EVERY calls (20 clients: the
    # rounding of each one's count is under 1), not one per call
    assert calls // YIELD_EVERY - 20 <= yields <= calls // YIELD_EVERY + 20


# -- what the built-in HTTP client counts lands under the client's name --------------------


def test_http_figures_of_a_clients_calls_land_under_its_name() -> None:
    """Each client's task has its own current_op: its name's stats in the delta, set after
    init_before_use, so neither init's nor shutdown's requests are counted."""
    seen: dict[str, set[int | None]] = {"init": set(), "call": set(), "shutdown": set()}

    async def answer(request: Request, writer: asyncio.StreamWriter) -> bool:
        status = {"/init": 201, "/a": 200, "/b": 404, "/shutdown": 202}[request.target]
        writer.write(response(status, b"x" * 10))
        return True

    def client_class(path: str, url: Callable[[], str]) -> type[ClientProtocol]:
        class Http(ClientProtocol):
            name = f"get {path}"

            async def init_before_use(self, host: str) -> None:
                seen["init"].add(id(current_op.get()) if current_op.get() else None)
                self.client = HttpClient(url())
                assert (await self.client.get("/init")).status == 201

            async def execute(self) -> None:
                seen["call"].add(id(current_op.get()))
                await self.client.get(path)

            async def shutdown(self) -> None:
                seen["shutdown"].add(id(current_op.get()) if current_op.get() else None)
                assert (await self.client.get("/shutdown")).status == 202
                await self.client.close()

        return Http

    totals = Totals()

    async def main() -> None:
        async with HttpTestServer(answer) as server:
            scheds = [ClientScheduler(client_class(path, server.url), "h", 0.002, totals)
                      for path in ("/a", "/b")]
            for sched in scheds:
                sched.start(asyncio.get_running_loop().time(), [0.0, 0.0])
            await asyncio.sleep(0.1)
            a = totals.op("get /a")
            totals.reset()  # as the publisher does each second: in place
            assert totals.op("get /a") is a and not a.statuses
            await asyncio.sleep(0.1)
            for sched in scheds:
                await sched.stop(1.0)
            for sched in scheds:
                await sched.shutdown_clients(1.0)
            assert len(server.requests) > 20

    run(main)
    a, b = totals.op("get /a"), totals.op("get /b")
    assert seen == {"init": {None}, "call": {id(a), id(b)}, "shutdown": {None}}
    assert a.ok > 5 and b.ok > 5 and a.fail == b.fail == 0
    # a response counted just before the reset may belong to a call counted just after
    assert a.statuses == {200: a.statuses[200]} and a.ok - 2 <= a.statuses[200] <= a.ok
    assert b.statuses == {404: b.statuses[404]} and b.ok - 2 <= b.statuses[404] <= b.ok
    each = len(response(200, b"x" * 10))
    assert a.received == each * a.statuses[200] and b.received == each * b.statuses[404]
    assert a.sent > 0 and b.sent > 0
