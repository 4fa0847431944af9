"""Lifecycle state of each process kind, without processes or ZeroMQ sockets.

The job's worker phases (loadagent/job.py), the worker's start/stop/abort
(loadagent/worker.py), the agent's signals, stdin and clock offset
(loadagent/daemon.py), the master's signals (loadmaster/run.py) and the coordinator's
handling of each control message (loadmaster/coordinator.py). Pipes stand in for
worker processes' pipes and a recording object for the ROUTER channel; the real
sockets and processes are covered by the e2e tests.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import io
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from loadagent.daemon import CLOCK_WINDOW, AgentDaemon, AgentOptions, ClockOffset
from loadagent.job import JobRun, WorkerHandle, WorkerPhase
from loadagent.scheduler import GraceReport
from loadagent.worker import Worker
from loadmaster.bundle import Bundle
from loadmaster.config import Config
from loadmaster.coordinator import AgentRecord, AgentState, Coordinator
from loadmaster.run import Run, RunOptions
from protocol.stats import Totals
from protocol.wire.codec import (
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    Message,
    Refused,
    decode,
    decode_joined,
    encode,
    encode_joined,
    pack,
)
from protocol.wire.messages import (
    MAX_NOTES,
    Abort,
    AgentReady,
    ClientsFailing,
    Farewell,
    Final,
    FinalAck,
    Heartbeat,
    Job,
    JobFailed,
    Leaving,
    Register,
    Start,
    Stop,
    Welcome,
    WorkerJob,
    WorkerLost,
    WorkerReady,
)

P = WorkerPhase


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (fixtures still reach it by name)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 10))

    return run


def make_job(workers: int, run_time: float = 10.0, stop_grace: float = 30.0) -> Job:
    return Job(run_id="0123456789abcdef", host="http://127.0.0.1:1", class_file="client.py",
               class_name="Client", custom_conf={}, users=workers, hatch_rate=1.0,
               run_time=run_time, wait_time=0.0, stop_grace=stop_grace,
               total_workers=workers, worker_ids=list(range(workers)), bundle=[])


def final(worker: int, clients: int = 1) -> Final:
    return Final(worker=worker, totals=Totals(), last_end=1.0, clients=clients, aborted=False,
                 start_lag=0.0, stopped_at=1.0, grace=0.0, grace_finished=0,
                 grace_cancelled=0)


# -- the job: the phase table ------------------------------------------------------------
# Written out here, apart from loadagent/job.py, so a changed table fails a test.
ALLOWED = {
    (P.STARTING, P.READY), (P.STARTING, P.FAILED), (P.STARTING, P.LOST),
    (P.READY, P.FINISHED), (P.READY, P.LOST),
    (P.FINISHED, P.ACKED),
}


@pytest.mark.parametrize("to", list(P), ids=lambda p: p.name)
@pytest.mark.parametrize("start", list(P), ids=lambda p: p.name)
def test_phase_transition_table(start: WorkerPhase, to: WorkerPhase,
                                caplog: pytest.LogCaptureFixture) -> None:
    h = WorkerHandle(3, process=None, conn=None, phase=start)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="loadagent"):
        moved = h.advance(to, "test")
    allowed = (start, to) in ALLOWED
    assert moved is allowed
    assert h.phase is (to if allowed else start)
    warned = [r for r in caplog.records if "worker 3" in r.getMessage()]
    assert bool(warned) is not allowed


# -- the job: worker messages --------------------------------------------------------------
class FakeProcess:
    """What JobRun uses of a worker's process: a sentinel to watch and an exit code."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        self.sentinel = self._r
        self.exitcode: int | None = None
        self.pid: int | None = None

    def join(self, timeout: float | None = None) -> None:
        pass

    def is_alive(self) -> bool:
        return self.exitcode is None

    def close(self) -> None:
        for fd in (self._r, self._w):
            os.close(fd)


class JobHarness:
    """A JobRun watching pipes and stand-in processes; what it sends the master is in
    ``sent``. Use inside a running loop."""

    def __init__(self, workers: int, spawn: int | None = None) -> None:
        self.sent: list[Message] = []
        self.run = JobRun(make_job(workers), "agent-a", "tcp://127.0.0.1:1",
                          mp=None,  # type: ignore[arg-type]  # nothing is spawned
                          send=self.sent.append, clock=lambda: (0.25, 0.01))
        self.handles: list[WorkerHandle] = []
        self.worker_ends: list[Any] = []
        for _ in range(workers if spawn is None else spawn):
            self.spawn()

    def spawn(self) -> WorkerHandle:
        ours, theirs = multiprocessing.Pipe(duplex=True)
        h = WorkerHandle(len(self.handles), FakeProcess(), ours)  # type: ignore[arg-type]
        self.handles.append(h)
        self.worker_ends.append(theirs)
        self.run._watch(h)
        return h

    def write(self, worker: int, msg: Message) -> None:
        """The worker writes ``msg`` into its pipe (not read yet)."""
        self.worker_ends[worker].send_bytes(encode_joined(msg))

    def say(self, worker: int, msg: Message) -> None:
        """The worker writes ``msg`` and the agent reads its pipe."""
        self.write(worker, msg)
        self.run._on_pipe(self.handles[worker])

    def exit(self, worker: int, code: int | None = 0) -> None:
        h = self.handles[worker]
        h.process.exitcode = code  # type: ignore[misc]
        self.run._on_exit(h)

    def of(self, kind: type[Message]) -> list[Any]:
        return [m for m in self.sent if isinstance(m, kind)]

    def __enter__(self) -> JobHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for h, theirs in zip(self.handles, self.worker_ends, strict=True):
            loop.remove_reader(h.process.sentinel)
            if not h.conn.closed:
                loop.remove_reader(h.conn.fileno())
                h.conn.close()
            theirs.close()
            h.process.close()


@in_loop
async def test_agent_ready_once_every_worker_is_ready() -> None:
    with JobHarness(3) as jh:
        jh.say(0, WorkerReady(worker=0, notes=["n0"]))
        jh.say(2, WorkerReady(worker=2, notes=[]))
        assert jh.of(AgentReady) == []
        jh.say(1, WorkerReady(worker=1, notes=["n1a", "n1b"]))
        jh.say(1, WorkerReady(worker=1, notes=["again"]))  # off the table: ignored
        assert jh.of(AgentReady) == [AgentReady(workers=3, clock_offset=0.25, rtt=0.01,
                                                notes=["n0", "n1a", "n1b"])]
        assert [h.phase for h in jh.handles] == [P.READY] * 3


@in_loop
async def test_agent_ready_waits_for_every_worker_of_the_job_to_be_spawned() -> None:
    with JobHarness(2, spawn=1) as jh:
        jh.say(0, WorkerReady(worker=0, notes=[]))
        assert jh.of(AgentReady) == []  # worker 1 is not even started
        jh.spawn()
        jh.say(1, WorkerReady(worker=1, notes=[]))
        assert len(jh.of(AgentReady)) == 1


@in_loop
async def test_agent_ready_counts_a_worker_that_already_finished() -> None:
    # a STOP before START: worker 0 sends its FINAL before worker 1 is ready
    with JobHarness(2) as jh:
        jh.say(0, WorkerReady(worker=0, notes=[]))
        jh.say(0, final(0))
        jh.say(1, WorkerReady(worker=1, notes=[]))
        assert len(jh.of(AgentReady)) == 1


@pytest.mark.parametrize(("workers", "per_worker"), [(2, MAX_NOTES // 2), (3, 10)])
@in_loop
async def test_agent_ready_notes_are_capped(workers: int, per_worker: int) -> None:
    with JobHarness(workers) as jh:
        for w in range(workers):
            jh.say(w, WorkerReady(worker=w, notes=[f"w{w} n{i}" for i in range(per_worker)]))
        every = [f"w{w} n{i}" for w in range(workers) for i in range(per_worker)]
        (ready,) = jh.of(AgentReady)
        if len(every) <= MAX_NOTES:
            assert ready.notes == every
        else:
            hidden = len(every) - MAX_NOTES + 1
            assert ready.notes == [*every[:MAX_NOTES - 1],
                                   f"... and {hidden} more notes in agent agent-a's log"]


@in_loop
async def test_job_failed_is_forwarded_and_its_exit_is_no_loss() -> None:
    with JobHarness(1) as jh:
        failed = JobFailed(worker=0, error="ImportError: no module named nope")
        jh.say(0, failed)
        assert jh.handles[0].phase is P.FAILED
        assert jh.sent == [failed]
        jh.exit(0, 1)
        assert jh.of(WorkerLost) == []
        assert jh.run.settled


@pytest.mark.parametrize("ready", [False, True], ids=["starting", "ready"])
@in_loop
async def test_exit_without_totals_sends_worker_lost(ready: bool) -> None:
    with JobHarness(2) as jh:
        if ready:
            jh.say(0, WorkerReady(worker=0, notes=[]))
        jh.exit(0, -9)
        assert jh.of(WorkerLost) == [WorkerLost(
            worker=0, exitcode=-9, detail="worker exited with code -9 before its totals")]
        assert jh.handles[0].phase is P.LOST
        assert not jh.run.settled  # worker 1 still runs
        jh.exit(1, None)  # no exit code known
        assert [m.exitcode for m in jh.of(WorkerLost)] == [-9, -1]
        assert jh.run.settled


@in_loop
async def test_a_final_written_just_before_the_exit_is_read_first() -> None:
    with JobHarness(1) as jh:
        jh.say(0, WorkerReady(worker=0, notes=[]))
        jh.write(0, final(0))  # in the pipe when the sentinel fires
        jh.exit(0, 0)
        assert jh.of(Final) == [final(0)]
        assert jh.of(WorkerLost) == []
        assert jh.handles[0].phase is P.FINISHED


@pytest.mark.parametrize("ack_first", [False, True], ids=["exit-then-ack", "ack-then-exit"])
@in_loop
async def test_final_then_ack_settles(ack_first: bool) -> None:
    with JobHarness(1) as jh:
        jh.say(0, WorkerReady(worker=0, notes=[]))
        jh.say(0, final(0))
        assert jh.of(Final) == [final(0)]
        assert not jh.run.settled
        if ack_first:
            jh.run.ack(0)
            assert not jh.run.settled  # the process still runs
            jh.exit(0)
        else:
            jh.exit(0)
            assert not jh.run.settled  # its totals are not acknowledged
            jh.run.ack(0)
        assert jh.handles[0].phase is P.ACKED
        assert jh.of(WorkerLost) == []
        assert jh.run.settled


@in_loop
async def test_resend_unacked_resends_only_unacknowledged_finals(
        caplog: pytest.LogCaptureFixture) -> None:
    with JobHarness(3) as jh:
        for w in range(3):
            jh.say(w, WorkerReady(worker=w, notes=[]))
        jh.say(0, final(0))
        jh.say(1, final(1))
        jh.run.ack(0)
        jh.sent.clear()
        jh.run.resend_unacked()
        assert jh.sent == [final(1)]  # not 0 (acked), not 2 (no totals yet)
        jh.run.ack(1)
        with caplog.at_level(logging.WARNING, logger="loadagent"):
            jh.run.ack(1)  # the ack of a resent FINAL: expected, not a warning
        assert caplog.records == []
        jh.sent.clear()
        jh.run.resend_unacked()
        assert jh.sent == []


@in_loop
async def test_an_ack_before_the_final_does_not_stop_its_resending() -> None:
    with JobHarness(1) as jh:
        jh.say(0, WorkerReady(worker=0, notes=[]))
        jh.run.ack(0)  # nothing to acknowledge yet: ignored
        assert jh.handles[0].phase is P.READY
        jh.say(0, final(0))
        jh.sent.clear()
        jh.run.resend_unacked()
        assert jh.sent == [final(0)]


@in_loop
async def test_messages_off_the_table_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with JobHarness(2) as jh, caplog.at_level(logging.WARNING, logger="loadagent"):
        jh.say(0, final(0))  # FINAL before READY
        jh.say(0, WorkerReady(worker=1, notes=[]))  # another worker's id
        jh.say(0, Start(t0=1.0))  # not a worker's message
        jh.worker_ends[0].send_bytes(b"garbage")  # undecodable
        jh.run._on_pipe(jh.handles[0])
        assert jh.sent == []
        assert [h.phase for h in jh.handles] == [P.STARTING, P.STARTING]
        jh.say(1, WorkerReady(worker=1, notes=[]))
        jh.say(1, JobFailed(worker=1, error="late"))  # after READY: too late to fail
        assert jh.sent == []
        assert jh.handles[1].phase is P.READY
        assert len(caplog.records) == 5  # one line for each


@in_loop
async def test_clients_failing_is_forwarded() -> None:
    with JobHarness(1) as jh:
        jh.say(0, WorkerReady(worker=0, notes=[]))
        jh.sent.clear()
        failing = ClientsFailing(worker=0, error="HttpInvalidUrl: no scheme")
        jh.say(0, failing)
        assert jh.sent == [failing]
        assert jh.handles[0].phase is P.READY


@in_loop
async def test_stop_is_forwarded_to_running_workers_only() -> None:
    with JobHarness(2) as jh:
        jh.exit(0, -9)
        jh.run.forward(Stop("run_time reached"))
        assert jh.worker_ends[1].poll(0)
        assert decode_joined(jh.worker_ends[1].recv_bytes()) == Stop("run_time reached")
        assert not jh.worker_ends[0].poll(0)


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


# -- the agent daemon: signals, stdin, clock offset --------------------------------------
def agent_daemon(embedded: bool = False) -> AgentDaemon:
    opts = AgentOptions(master="tcp://127.0.0.1:1", name="agent-a", workers=1,
                        max_message=1 << 20, embedded=embedded)
    return AgentDaemon(opts, mp=None)  # type: ignore[arg-type]  # nothing is spawned


def test_agent_first_signal_asks_for_a_graceful_stop() -> None:
    d = agent_daemon()
    d._on_signal(signal.SIGTERM)
    assert (d.should_exit, d.force_exit) == (True, False)
    assert d._wake.is_set()  # the serve loop acts at once


def test_agent_second_signal_forces_the_exit() -> None:
    d = agent_daemon()
    d._on_signal(signal.SIGTERM)
    d._wake.clear()
    d._on_signal(signal.SIGINT)
    assert (d.should_exit, d.force_exit) == (True, True)
    assert d._wake.is_set()
    assert not d._master_gone  # a signal is no reason to skip LEAVING


@in_loop
async def test_agent_stdin_eof_means_the_master_is_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    stdin = os.fdopen(r, "rb", buffering=0)
    monkeypatch.setattr(sys, "stdin", stdin)
    d = agent_daemon(embedded=True)
    loop = asyncio.get_running_loop()
    try:
        os.write(w, b"anything")
        d._on_stdin()  # data, not EOF: the master is still there
        assert (d.should_exit, d.force_exit, d._wake.is_set()) == (False, False, False)
        loop.add_reader(r, d._on_stdin)
        os.close(w)
        w = -1
        await asyncio.wait_for(d._wake.wait(), 5)
        assert (d.should_exit, d.force_exit, d._master_gone) == (True, True, True)
        assert not loop.remove_reader(r)  # it stopped watching a closed stdin itself
    finally:
        loop.remove_reader(r)
        stdin.close()
        if w >= 0:
            os.close(w)


def test_clock_offset_takes_the_sample_with_the_shortest_round_trip() -> None:
    c = ClockOffset()
    c.sample(sent=0.0, master_time=10.5, received=1.0)  # rtt 1.0, offset 10.0
    c.sample(sent=2.0, master_time=12.45, received=2.1)  # rtt 0.1, offset 10.4
    c.sample(sent=3.0, master_time=20.0, received=3.5)  # rtt 0.5, offset 16.75
    assert c.rtt == pytest.approx(0.1)
    assert c.offset == pytest.approx(10.4)


@pytest.mark.parametrize(("offset", "estimate"), [(0.04, 0.0), (-0.04, 0.0), (0.2, 0.2),
                                                  (-0.2, -0.2)])
def test_clock_offset_within_half_the_round_trip_is_none(offset: float,
                                                         estimate: float) -> None:
    c = ClockOffset()
    c.sample(sent=100.0, master_time=100.05 + offset, received=100.1)  # rtt 0.1
    assert c.offset == pytest.approx(estimate)


def test_clock_offset_ignores_a_negative_round_trip() -> None:
    c = ClockOffset()
    c.sample(sent=0.0, master_time=5.5, received=1.0)
    c.sample(sent=2.0, master_time=99.0, received=1.9)  # the clock stepped back
    assert (c.rtt, c.offset) == (1.0, 5.0)


def test_clock_offset_forgets_samples_beyond_its_window() -> None:
    c = ClockOffset()
    c.sample(sent=0.0, master_time=5.005, received=0.01)  # the best ever: rtt 0.01
    for i in range(CLOCK_WINDOW):
        t = 10.0 + i
        c.sample(sent=t, master_time=t + 0.5 + 7.0, received=t + 1.0)  # rtt 1, offset 7
    assert (c.rtt, c.offset) == (1.0, 7.0)


# -- the master's run: signals -----------------------------------------------------------
@pytest.fixture
def master_run() -> Iterator[Run]:
    cfg = Config(host="http://127.0.0.1:1", users=1, run_time=1.0,
                 benchmark_class_file=Path("client.py"), agents=1)
    run = Run(cfg, Bundle(), RunOptions(), io.StringIO())
    try:
        yield run
    finally:
        run._ctx.term()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_master_first_signal_stops_gracefully(master_run: Run, signum: int, code: int,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    master_run._on_signal(signum)
    assert (master_run.should_exit, master_run.force_exit) == (True, False)
    assert master_run._changed.is_set()  # the run loop acts at once
    assert master_run._interrupted("during the load").code == code
    assert "stopping gracefully" in capsys.readouterr().err


def test_master_second_signal_aborts_and_the_first_names_the_exit(
        master_run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    master_run._on_signal(signal.SIGTERM)
    master_run._on_signal(signal.SIGINT)
    assert (master_run.should_exit, master_run.force_exit) == (True, True)
    assert master_run._interrupted("during the load").code == 143
    assert capsys.readouterr().err.count("interrupted") == 1


# -- the coordinator: one handler per control message ------------------------------------
class RouterWire:
    """Stands in for the master's ROUTER channel: what was sent to whom, decoded."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Message | Refused]] = []
        self.unreachable: set[bytes] = set()

    def send(self, frames: list[bytes]) -> None:
        identity, *rest = frames
        if identity in self.unreachable:
            raise zmq.ZMQError(errno.EHOSTUNREACH)
        msg: Message | Refused
        try:
            msg = decode(rest)
        except Refused as e:
            msg = e
        self.sent.append((identity, msg))

    def close(self, linger_ms: int = 0) -> None:
        pass

    def to(self, identity: bytes) -> list[Message | Refused]:
        return [m for i, m in self.sent if i == identity]


class Master:
    """A Coordinator on a RouterWire, counting its change notices."""

    def __init__(self, wanted: int = 2, token: str | None = None) -> None:
        self.changes = 0
        self.coord = Coordinator(None, "127.0.0.1", 0,  # type: ignore[arg-type]  # no bind
                                 wanted=wanted, token=token, on_change=self._changed)
        self.coord.stats_port = 4242
        self.wire = RouterWire()
        self.coord._channel = self.wire  # type: ignore[assignment]

    def _changed(self) -> None:
        self.changes += 1

    def receive(self, identity: bytes, msg: Message) -> None:
        self.coord._dispatch([identity, *encode(msg)])

    def register(self, identity: bytes, name: str, token: str = "") -> AgentRecord | None:
        self.receive(identity, Register(name=name, hostname="host", cores=2, workers=2,
                                        version="0.1.0", pid=1234, max_message=1 << 20,
                                        token=token))
        return self.coord.agents.get(identity)

    def agent(self, identity: bytes = b"A", workers: tuple[int, ...] = (0, 1)) -> AgentRecord:
        """A registered agent with its workers planned."""
        agent = self.register(identity, identity.decode().lower())
        assert agent is not None
        agent.worker_ids = list(workers)
        self.wire.sent.clear()
        self.changes = 0
        return agent


def test_coordinator_register_is_welcomed() -> None:
    m = Master()
    agent = m.register(b"A", "a")
    assert agent is not None
    assert (agent.name, agent.state, agent.order) == ("a", AgentState.REGISTERED, 0)
    (welcome,) = m.wire.to(b"A")
    assert isinstance(welcome, Welcome)
    assert (welcome.accepted, welcome.reason, welcome.stats_port) == (True, "", 4242)
    assert m.changes == 1
    assert m.register(b"A", "a") is agent  # a resent REGISTER: welcomed again, once known
    assert [w.accepted for w in m.wire.to(b"A")] == [True, True]  # type: ignore[union-attr]
    assert (len(m.coord.agents), m.changes) == (1, 1)


def test_coordinator_register_with_the_token() -> None:
    m = Master(token="secret")
    assert m.register(b"A", "local", token="secret") is not None


def _refused_setups() -> dict[str, tuple[Callable[[], Master], str, str]]:
    def planned() -> Master:
        m = Master()
        m.coord.run_planned = True
        return m

    def one_wanted() -> Master:
        m = Master(wanted=1)
        m.register(b"X", "x")
        return m

    def named_a() -> Master:
        m = Master(wanted=2)
        m.register(b"X", "a")
        return m

    return {
        "run planned": (planned, "a", "a run is in progress"),
        "bad token": (lambda: Master(token="secret"), "a",
                      "this master only accepts its own embedded agent"),
        "too many": (one_wanted, "a", "the master already has the 1 agent(s) it asked for"),
        "same name": (named_a, "a", "an agent named 'a' is already registered"),
    }


@pytest.mark.parametrize("case", list(_refused_setups()))
def test_coordinator_register_is_refused(case: str) -> None:
    setup, name, reason = _refused_setups()[case]
    m = setup()
    known = dict(m.coord.agents)
    assert m.register(b"A", name, token="wrong") is None
    assert m.coord.agents == known
    (welcome,) = m.wire.to(b"A")
    assert isinstance(welcome, Welcome)
    assert (welcome.accepted, welcome.reason) == (False, reason)


def test_coordinator_register_from_a_socket_already_gone_is_not_recorded() -> None:
    m = Master()
    m.wire.unreachable.add(b"A")
    assert m.register(b"A", "a") is None
    assert m.changes == 0


def test_coordinator_register_of_another_version_is_refused_readably() -> None:
    m = Master()
    reg = Register(name="a", hostname="h", cores=1, workers=1, version="9", pid=1,
                   max_message=1, token="")
    m.coord._dispatch([b"A", HEADER.pack(MAGIC, PROTOCOL_VERSION + 1, Register.TYPE),
                       pack(reg)])
    (refused,) = m.wire.to(b"A")
    assert isinstance(refused, Refused)
    assert f"version {PROTOCOL_VERSION + 1}" in str(refused)
    assert m.coord.agents == {}


def test_coordinator_heartbeat_is_echoed() -> None:
    m = Master()
    m.agent(b"A")
    m.receive(b"A", Heartbeat(sent_at=5.5, echo=0.0))
    (echo,) = m.wire.to(b"A")
    assert isinstance(echo, Heartbeat) and echo.echo == 5.5


def test_coordinator_agent_ready() -> None:
    m = Master()
    agent = m.agent(b"A")
    m.receive(b"A", AgentReady(workers=2, clock_offset=0.3, rtt=0.002, notes=["few fds"]))
    assert agent.state is AgentState.READY
    assert (agent.clock_offset, agent.rtt, agent.notes) == (0.3, 0.002, ["few fds"])
    assert m.changes == 1


def test_coordinator_final_is_kept_once_per_worker_and_always_acknowledged() -> None:
    m = Master()
    agent = m.agent(b"A", workers=(0, 1))
    m.receive(b"A", final(0, clients=5))
    m.receive(b"A", final(0, clients=6))  # resent (or wrong): the first stands
    m.receive(b"A", final(7))  # not this agent's worker
    assert agent.finals == {0: final(0, clients=5)}
    assert m.wire.to(b"A") == [FinalAck(worker=0), FinalAck(worker=0)]
    assert not agent.settled()
    m.receive(b"A", final(1))
    assert agent.settled()


def test_coordinator_worker_lost_counts_only_before_its_final() -> None:
    m = Master()
    agent = m.agent(b"A", workers=(0, 1))
    m.receive(b"A", final(0))
    m.receive(b"A", WorkerLost(worker=0, exitcode=0, detail="late"))
    m.receive(b"A", WorkerLost(worker=1, exitcode=-9, detail="killed"))
    assert agent.lost_workers == {1: "killed"}
    assert agent.settled()


def test_coordinator_clients_failing_keeps_the_first_error_of_its_own_workers() -> None:
    m = Master()
    agent = m.agent(b"A", workers=(0,))
    m.receive(b"A", ClientsFailing(worker=0, error="first"))
    m.receive(b"A", ClientsFailing(worker=0, error="second"))
    m.receive(b"A", ClientsFailing(worker=3, error="not its worker"))
    assert agent.failing == {0: "first"}


def test_coordinator_leaving_is_left_with_a_farewell() -> None:
    m = Master()
    agent = m.agent(b"A", workers=(0,))
    m.receive(b"A", Leaving(reason="agent shut down by a signal"))
    assert agent.state is AgentState.LEFT and agent.gone
    assert agent.lost_reason == "left: agent shut down by a signal"
    assert agent.lost_at is not None
    assert m.wire.to(b"A") == [Farewell(reason="recorded")]
    assert m.coord.accepted == []
    m.receive(b"A", Heartbeat(sent_at=1.0, echo=0.0))  # gone: not answered
    m.receive(b"A", final(0))  # nor counted
    assert len(m.wire.sent) == 1
    assert agent.finals == {}


def test_coordinator_an_unreachable_agent_is_lost_and_then_ignored() -> None:
    m = Master()
    agent = m.agent(b"A", workers=(0,))
    m.wire.unreachable.add(b"A")
    m.receive(b"A", Heartbeat(sent_at=1.0, echo=0.0))
    assert agent.state is AgentState.LOST and agent.lost_reason == "unreachable"
    m.wire.unreachable.clear()
    m.receive(b"A", final(0))
    assert agent.finals == {} and m.wire.sent == []


def test_coordinator_ignores_peers_that_never_registered() -> None:
    m = Master()
    for msg in (Heartbeat(sent_at=1.0, echo=0.0), AgentReady(2, 0.0, 0.0, []), final(0),
                Leaving(reason="x")):
        m.receive(b"X", msg)
    assert (m.wire.sent, m.coord.agents, m.changes) == ([], {}, 0)


@pytest.mark.parametrize("frames", [
    [b"A"],
    encode(Heartbeat(sent_at=1.0, echo=0.0)),  # no identity
    [b"A", *encode(Heartbeat(sent_at=1.0, echo=0.0)), b"extra"],
], ids=["1 frame", "2 frames", "4 frames"])
def test_coordinator_drops_a_message_of_the_wrong_frame_count(
        frames: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    m = Master()
    agent = m.agent(b"A")
    agent.last_heard = 0.0
    with caplog.at_level(logging.WARNING, logger="loadmaster"):
        m.coord._dispatch(frames)
    assert m.wire.sent == []
    assert agent.last_heard == 0.0  # not even proof of life
    assert caplog.messages == [f"dropped a control message of {len(frames)} frames"]


def test_coordinator_drops_a_bad_body() -> None:
    m = Master()
    agent = m.agent(b"A")
    agent.last_heard = 0.0
    m.coord._dispatch([b"A", HEADER.pack(MAGIC, PROTOCOL_VERSION, Heartbeat.TYPE), b"\xc1"])
    assert m.wire.sent == [] and agent.last_heard == 0.0
