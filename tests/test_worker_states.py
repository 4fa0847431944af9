"""The worker's START, STOP and ABORT (loadagent/worker.py).

Without a worker process: the Worker runs in the test on one end of a pipe, with
stand-ins for its scheduler and wall clock; the real processes are covered by the e2e
tests.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import pytest

from loadagent.scheduler import GraceReport
from loadagent.worker import Worker
from protocol.wire.codec import encode_joined
from protocol.wire.messages import Abort, Final, Start, Stop, WorkerJob
from tests.state_helpers import final, in_loop, make_job


# -- the worker: START, STOP, ABORT ------------------------------------------------------
class Clock:
    """loadagent.worker's ``time`` module, with a wall clock the test sets."""

    process_time = staticmethod(time.process_time)
    perf_counter_ns = staticmethod(time.perf_counter_ns)

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


class FakeScheduler:
    """The worker's calls on its scheduler: aborts, and a shutdown whose clients hang
    until its timeout (as ClientScheduler.shutdown_clients cuts them)."""

    started = 0
    grace = GraceReport()
    last_call_end_ns = 0

    def __init__(self) -> None:
        self.aborts: list[str] = []
        self.shutdown_timeouts: list[float] = []
        self.shutting_down = asyncio.Event()
        self.shutdown_cancelled = False

    def abort(self, reason: str) -> None:
        self.aborts.append(reason)

    async def shutdown_clients(self, timeout: float) -> None:
        self.shutdown_timeouts.append(timeout)
        self.shutting_down.set()
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            self.shutdown_cancelled = True
            raise


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(100.0)
    monkeypatch.setattr("loadagent.worker.time", c)
    return c


class WorkerHarness:
    """A Worker on one end of a pipe, armed as its run() arms it; ``agent`` is the other
    end. Use inside a running loop."""

    def __init__(self, run_time: float = 10.0, stop_grace: float = 30.0) -> None:
        self.agent, theirs = multiprocessing.Pipe(duplex=True)
        wj = WorkerJob(job=make_job(1, run_time, stop_grace), worker=0, agent="agent-a",
                       stats_endpoint="tcp://127.0.0.1:1", run_dir="/nonexistent")
        self.worker = Worker(theirs, wj)
        self.worker._arm()
        self.sched = FakeScheduler()

    def with_scheduler(self) -> WorkerHarness:
        """As once the load runs."""
        self.worker._sched = self.sched  # type: ignore[assignment]
        return self

    @property
    def start(self) -> asyncio.Future[float]:
        assert self.worker._start is not None
        return self.worker._start

    @property
    def stopped(self) -> bool:
        assert self.worker._done is not None
        return self.worker._done.is_set()

    def final(self, t0: float | None) -> Final:
        """The FINAL it would send now."""
        return self.worker._final(t0)

    def __enter__(self) -> WorkerHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.agent.close()
        self.worker._conn.close()


@in_loop
async def test_worker_start_sets_the_start_once(clock: Clock) -> None:
    with WorkerHarness() as wh:
        wh.agent.send_bytes(encode_joined(Start(t0=200.0)))  # through the pipe
        wh.worker._on_pipe()
        wh.worker._handle(Start(t0=300.0))
        assert wh.start.result() == 200.0
        assert not wh.stopped


@in_loop
async def test_worker_stop_before_start_cancels_the_start(clock: Clock) -> None:
    with WorkerHarness() as wh:
        wh.worker._handle(Stop("interrupted"))
        assert wh.start.cancelled()
        assert wh.stopped
        wh.worker._handle(Start(t0=200.0))  # too late: no load
        assert wh.start.cancelled()
        assert wh.final(None).stopped_at == 0.0  # never started: no stop time
        assert not wh.final(None).aborted


@in_loop
async def test_worker_stop_after_start_stamps_the_stop_once(clock: Clock) -> None:
    with WorkerHarness() as wh:
        wh.worker._handle(Start(t0=100.0))
        clock.now = 104.0
        wh.worker._handle(Stop("interrupted"))
        assert wh.stopped
        assert wh.final(100.0).stopped_at == 4.0
        clock.now = 107.0
        wh.worker._handle(Stop("again"))
        assert wh.final(100.0).stopped_at == 4.0


@in_loop
async def test_worker_run_time_after_an_earlier_stop_keeps_the_stop_time(clock: Clock) -> None:
    with WorkerHarness(run_time=10.0) as wh:
        wh.worker._handle(Start(t0=100.0))
        clock.now = 104.0
        wh.worker._handle(Stop("interrupted"))
        clock.now = 110.0
        wh.worker._run_time_reached(100.0)
        assert wh.final(100.0).stopped_at == 4.0


@in_loop
async def test_worker_run_time_is_the_stop_even_when_its_timer_fires_early(
        clock: Clock) -> None:
    with WorkerHarness(run_time=10.0) as wh:
        wh.worker._handle(Start(t0=100.0))
        clock.now = 109.999
        wh.worker._run_time_reached(100.0)
        assert wh.stopped
        assert wh.final(100.0).stopped_at == 10.0


@in_loop
async def test_worker_abort_keeps_the_first_reason_and_aborts_the_scheduler(
        clock: Clock) -> None:
    with WorkerHarness() as wh:
        wh.with_scheduler()
        wh.worker._handle(Start(t0=100.0))
        clock.now = 103.0
        wh.worker._handle(Abort("interrupted twice"))
        clock.now = 105.0
        wh.worker._handle(Abort("the agent is closing the run"))
        assert wh.sched.aborts == ["interrupted twice", "interrupted twice"]
        assert wh.stopped
        assert wh.final(100.0).aborted
        assert wh.final(100.0).stopped_at == 3.0


@in_loop
async def test_worker_abort_before_start_cancels_the_start(clock: Clock) -> None:
    with WorkerHarness() as wh:
        wh.worker._handle(Abort("the run cannot start"))
        assert wh.start.cancelled()
        assert wh.final(None).aborted


@pytest.mark.parametrize("aborted_before", [False, True])
@in_loop
async def test_worker_agent_gone_is_an_abort(aborted_before: bool, clock: Clock) -> None:
    with WorkerHarness() as wh:
        wh.with_scheduler()
        wh.worker._handle(Start(t0=100.0))
        if aborted_before:
            wh.worker._handle(Abort("interrupted twice"))
        wh.agent.close()  # the agent died
        wh.worker._on_pipe()
        first = "interrupted twice" if aborted_before else "the agent is gone"
        assert wh.sched.aborts[-1] == first
        assert wh.stopped
        wh.worker._send(final(0))  # nobody reads it: dropped, no error


@in_loop
async def test_worker_an_abort_cuts_the_clients_shutdown_short(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("loadagent.worker.SHUTDOWN_TIMEOUT_ON_ABORT", 0.05)
    with WorkerHarness(stop_grace=30.0) as wh:
        wh.worker._handle(Start(t0=time.time()))
        wh.worker._handle(Stop("run_time reached"))
        shutdown = asyncio.ensure_future(wh.worker._shutdown_clients(wh.sched))  # type: ignore[arg-type]
        await wh.sched.shutting_down.wait()
        wh.worker._handle(Abort("interrupted twice"))
        # without the abort this waits the whole 30 s and the test times out
        await asyncio.wait_for(shutdown, 5)
        assert wh.sched.shutdown_timeouts == [30.0]
        assert wh.sched.shutdown_cancelled


@in_loop
async def test_worker_shutdown_after_an_abort_gets_the_short_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("loadagent.worker.SHUTDOWN_TIMEOUT_ON_ABORT", 0.05)
    with WorkerHarness(stop_grace=30.0) as wh:
        wh.worker._handle(Abort("interrupted twice"))
        await asyncio.wait_for(wh.worker._shutdown_clients(wh.sched), 5)  # type: ignore[arg-type]
        assert wh.sched.shutdown_timeouts == [0.05]
