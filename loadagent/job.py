"""One job on an agent: its run directory, its worker processes, and the messages
between them and the master.

Workers are started from the agent's forkserver (never forked from a process with a
running loop or a ZeroMQ context). Each is watched through its pipe and its process
sentinel; a worker that exits without sending its totals is reported as lost, never
restarted.

Theory of operation: a worker's life, as the agent sees it, is one ``WorkerPhase``,
moved only along ``TRANSITIONS``. It is STARTING from its spawn (the job is in its
pipe); WORKER_READY makes it READY, JOB_FAILED (its client failed before load) FAILED.
Its FINAL makes it FINISHED: the totals are resent every heartbeat until the master's
FINAL_ACK makes it ACKED. A process that exits while STARTING or READY went without its
totals: LOST, and the master hears WORKER_LOST. That the process has exited is a fact
apart (``WorkerHandle.process_exited``): a FINISHED worker may still be shutting its
clients down, and the ack may come after its exit. Anything off the table (a second
READY, a FINAL before READY, a JOB_FAILED after it) is logged and ignored: a bad message
from a worker never crashes the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

from loadagent.rundir import RunDir, write_bundle
from loadagent.worker import worker_main
from protocol.bundle import BundleError
from protocol.security import Curve, curve_keys
from protocol.wire.codec import Message, WireError, decode_joined, encode_joined
from protocol.wire.limits import FINAL_MAX
from protocol.wire.messages import (
    MAX_NOTES,
    Abort,
    AgentReady,
    ClientsFailing,
    Final,
    Job,
    JobFailed,
    JobRefused,
    Start,
    Stop,
    WorkerJob,
    WorkerLost,
    WorkerReady,
)

log = logging.getLogger("loadagent")
EXIT_WAIT = 3.0


class WorkerPhase(Enum):
    STARTING = "starting"  # process started, job sent
    READY = "ready"  # WORKER_READY: client imported, global_init done
    FINISHED = "finished"  # FINAL in hand, not yet acknowledged by the master
    ACKED = "acked"  # the master acknowledged the FINAL
    FAILED = "failed"  # JOB_FAILED: the client failed before load; no totals will come
    LOST = "lost"  # the process exited without its totals


TRANSITIONS: dict[WorkerPhase, frozenset[WorkerPhase]] = {
    WorkerPhase.STARTING: frozenset({WorkerPhase.READY, WorkerPhase.FAILED, WorkerPhase.LOST}),
    WorkerPhase.READY: frozenset({WorkerPhase.FINISHED, WorkerPhase.LOST}),
    WorkerPhase.FINISHED: frozenset({WorkerPhase.ACKED}),
    WorkerPhase.ACKED: frozenset(),
    WorkerPhase.FAILED: frozenset(),
    WorkerPhase.LOST: frozenset(),
}
# the phases a worker reaches only through READY: it counts as ready for AGENT_READY
WAS_READY = frozenset({WorkerPhase.READY, WorkerPhase.FINISHED, WorkerPhase.ACKED})
# the phases an exit without totals makes LOST
NO_TOTALS_YET = frozenset({WorkerPhase.STARTING, WorkerPhase.READY})


@dataclass
class WorkerHandle:
    index: int  # global worker id in the run
    process: BaseProcess
    conn: Connection
    phase: WorkerPhase = WorkerPhase.STARTING
    process_exited: bool = False  # its sentinel fired; apart from the phase (see above)
    notes: list[str] = field(default_factory=list)  # from its WORKER_READY
    final: Final | None = None  # its totals from FINISHED on, resent until ACKED

    def advance(self, to: WorkerPhase, why: str) -> bool:
        """Move to ``to`` if ``TRANSITIONS`` allows it; otherwise log, stay, and say so."""
        if to not in TRANSITIONS[self.phase]:
            log.warning("worker %d: %s while %s: ignored", self.index, why, self.phase.value)
            return False
        self.phase = to
        return True


class JobRun:
    def __init__(self, job: Job, agent: str, stats_endpoint: str, mp: ForkServerContext,
                 send: Callable[[Message], None], clock: Callable[[], tuple[float, float]],
                 curve: Curve | None = None) -> None:
        self.job = job
        self._curve = curve
        self._agent = agent
        self._stats_endpoint = stats_endpoint
        self._mp = mp
        self._send = send
        self._clock = clock  # (offset, rtt) of the agent's clock estimate
        self._rundir: RunDir | None = None
        self._workers: dict[int, WorkerHandle] = {}
        self._starting: asyncio.Task[None] | None = None
        self._closing = False
        self._pending: Stop | Abort | None = None  # for workers spawned after it came
        self._exits = asyncio.Event()  # set whenever a worker exits
        self.refused = False  # the job could not start: nothing runs

    @property
    def run_id(self) -> str:
        return self.job.run_id

    def begin(self) -> None:
        """Start the job in the background: the agent keeps heartbeating meanwhile."""
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        # Writing files and starting processes block: off the event loop, so heartbeats
        # go on even on a loaded machine.
        try:
            self._rundir = await asyncio.to_thread(self._write_rundir)
            for index in self.job.worker_ids:
                if self._closing:
                    return
                handle = await asyncio.to_thread(self._spawn, index)
                self._watch(handle)
                if self._pending is not None:
                    self.forward(self._pending)
        except Exception as e:  # the master must hear of it, or it waits for READY
            what = "bundle refused" if isinstance(e, BundleError) else "job could not start"
            log.error("run %s: %s: %s", self.run_id, what, e)
            self._send(JobRefused(error=f"agent {self._agent}: {what}: {e}"))
            self.refused = True
            return
        log.info("run %s: started %d worker(s) in %s", self.run_id, len(self._workers),
                 self._rundir.path)

    def _write_rundir(self) -> RunDir:
        rundir = RunDir()
        try:
            write_bundle(self.job.bundle, rundir.path)
        except BaseException:
            rundir.remove()
            raise
        return rundir

    def _spawn(self, index: int) -> WorkerHandle:
        assert self._rundir is not None
        ours, theirs = self._mp.Pipe(duplex=True)
        proc = self._mp.Process(target=worker_main, args=(theirs,),
                                name=f"loadworker-{index}", daemon=False)
        proc.start()
        theirs.close()
        handle = WorkerHandle(index, proc, ours)
        try:
            ours.send_bytes(encode_joined(WorkerJob(
                job=replace(self.job, bundle=[]), worker=index, agent=self._agent,
                stats_endpoint=self._stats_endpoint, run_dir=str(self._rundir.path),
                curve=curve_keys(self._curve))))
        except BaseException:
            _kill(handle)
            raise
        return handle

    def _watch(self, h: WorkerHandle) -> None:
        self._workers[h.index] = h
        loop = asyncio.get_running_loop()
        loop.add_reader(h.conn.fileno(), self._on_pipe, h)
        loop.add_reader(h.process.sentinel, self._on_exit, h)

    # -- from workers -----------------------------------------------------------------
    def _on_pipe(self, h: WorkerHandle) -> None:
        try:
            while h.conn.poll():
                data = h.conn.recv_bytes(FINAL_MAX + 64)
                try:
                    self._from_worker(h, decode_joined(data))
                except WireError as e:
                    log.warning("worker %d sent a bad message: %s", h.index, e)
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(h.conn.fileno())

    def _from_worker(self, h: WorkerHandle, msg: Message) -> None:
        if not isinstance(msg, WorkerReady | JobFailed | ClientsFailing | Final) \
                or msg.worker != h.index:
            log.warning("run %s: worker %d sent an unexpected %s: ignored", self.run_id,
                        h.index, type(msg).__name__)
        elif isinstance(msg, WorkerReady):
            if h.advance(WorkerPhase.READY, "WORKER_READY"):
                h.notes = msg.notes
                for note in msg.notes:  # the master shows them to the user
                    log.info("run %s: %s", self.run_id, note)
                self._ready_if_all()
        elif isinstance(msg, JobFailed):
            if h.advance(WorkerPhase.FAILED, "JOB_FAILED"):
                log.info("run %s: worker %d: the client failed before load", self.run_id,
                         h.index)
                self._send(msg)
        elif isinstance(msg, ClientsFailing):
            log.info("run %s: worker %d: every client fails: %s", self.run_id, h.index,
                     msg.error)
            self._send(msg)
        elif h.advance(WorkerPhase.FINISHED, "FINAL"):
            h.final = msg
            self._send(msg)

    def _ready_if_all(self) -> None:
        """AGENT_READY when every worker of the job was spawned and is ready: called on each
        move to READY, which a worker makes once, so this is true at most once."""
        if len(self._workers) != len(self.job.worker_ids) \
                or any(w.phase not in WAS_READY for w in self._workers.values()):
            return
        offset, rtt = self._clock()
        notes = [n for w in self._workers.values() for n in w.notes]
        if len(notes) > MAX_NOTES:
            notes[MAX_NOTES - 1:] = [f"... and {len(notes) - MAX_NOTES + 1} more "
                                     f"notes in agent {self._agent}'s log"]
        self._send(AgentReady(workers=len(self._workers), clock_offset=offset, rtt=rtt,
                              notes=notes))
        log.info("run %s: all %d worker(s) ready", self.run_id, len(self._workers))

    def _on_exit(self, h: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(h.process.sentinel)
        self._on_pipe(h)  # what it wrote before exiting
        with contextlib.suppress(OSError, ValueError):
            loop.remove_reader(h.conn.fileno())
        h.process.join(0)
        h.process_exited = True
        code = h.process.exitcode if h.process.exitcode is not None else -1
        if h.phase in NO_TOTALS_YET:
            h.advance(WorkerPhase.LOST, "exit")
            log.error("run %s: worker %d exited (code %s) without its totals",
                      self.run_id, h.index, code)
            self._send(WorkerLost(worker=h.index, exitcode=code,
                                  detail=f"worker exited with code {code} before its totals"))
        else:
            log.info("run %s: worker %d finished (code %s)", self.run_id, h.index, code)
        self._exits.set()

    async def _all_watched_exited(self) -> None:
        while not all(h.process_exited for h in self._workers.values()):
            self._exits.clear()
            await self._exits.wait()

    # -- from the master --------------------------------------------------------------
    def forward(self, msg: Start | Stop | Abort) -> None:
        if isinstance(msg, Stop | Abort):
            self._pending = msg
        data = encode_joined(msg)
        for h in self._workers.values():
            if not h.process_exited:
                with contextlib.suppress(OSError):
                    h.conn.send_bytes(data)

    def ack(self, worker: int) -> None:
        h = self._workers.get(worker)
        if h is None or h.phase is WorkerPhase.ACKED:
            return  # ACKED: the ack of a FINAL resent before the first ack arrived
        h.advance(WorkerPhase.ACKED, "FINAL_ACK")

    def resend_unacked(self) -> None:
        for h in self._workers.values():
            if h.phase is WorkerPhase.FINISHED and h.final is not None:
                self._send(h.final)

    @property
    def settled(self) -> bool:
        """Every worker has exited and each one's totals were acknowledged (or lost)."""
        return all(h.process_exited and h.phase is not WorkerPhase.FINISHED
                   for h in self._workers.values())

    async def close(self) -> None:
        """Abort what still runs, wait briefly, kill the rest, remove the run directory."""
        self._closing = True
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        alive = [h for h in self._workers.values() if not h.process_exited]
        if alive:
            self.forward(Abort("the agent is closing the run"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_watched_exited(), EXIT_WAIT)
        loop = asyncio.get_running_loop()
        for h in self._workers.values():
            if h.process.is_alive():
                log.warning("run %s: killing worker %d", self.run_id, h.index)
                _kill(h)
            for fd in (h.conn.fileno() if not h.conn.closed else -1, h.process.sentinel):
                with contextlib.suppress(OSError, ValueError):
                    if fd >= 0:
                        loop.remove_reader(fd)
            h.conn.close()
            h.process.join(0)
            with contextlib.suppress(ValueError):
                h.process.close()
        if self._rundir is not None:
            # off the loop: a bundle of 200,000 files takes seconds to delete
            await asyncio.to_thread(self._rundir.remove)
            log.info("run %s: run directory removed", self.run_id)


def _kill(h: WorkerHandle) -> None:
    """SIGKILL a worker's process group (what it started too), or the worker alone when
    it has not made its group yet."""
    pid = h.process.pid
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    h.process.join(2)
