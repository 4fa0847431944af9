"""The job's worker phases and its handling of worker messages (loadagent/job.py).

Without worker processes: pipes stand in for worker processes' pipes, and an object
with a sentinel pipe and an exit code for each process; the real processes are covered
by the e2e tests.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from typing import Any

import pytest

from loadagent.job import JobRun, WorkerHandle, WorkerPhase
from protocol.wire.codec import Message, decode_joined, encode_joined
from protocol.wire.messages import (
    MAX_NOTES,
    AgentReady,
    ClientsFailing,
    Final,
    JobFailed,
    Start,
    Stop,
    WorkerLost,
    WorkerReady,
)
from tests.state_helpers import final, in_loop, make_job

P = WorkerPhase


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
