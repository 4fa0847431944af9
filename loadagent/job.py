"""One job on an agent: its run directory, its worker processes, and the messages
between them and the master.

Workers are started from the agent's forkserver (never forked from a process with a
running loop or a ZeroMQ context). Each is watched through its pipe and its process
sentinel; a worker that exits without sending its totals is reported as lost, never
restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

from loadagent.rundir import RunDir, write_bundle
from loadagent.worker import worker_main
from protocol.bundle import BundleError
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


@dataclass
class WorkerHandle:
    index: int  # global worker id in the run
    process: BaseProcess
    conn: Connection
    ready: bool = False
    notes: list[str] = field(default_factory=list)
    final: Final | None = None
    acked: bool = False
    exited: bool = False
    failed: bool = False


class JobRun:
    def __init__(self, job: Job, agent: str, stats_endpoint: str, mp: ForkServerContext,
                 send: Callable[[Message], None], clock: Callable[[], tuple[float, float]]) -> None:
        self.job = job
        self._agent = agent
        self._stats_endpoint = stats_endpoint
        self._mp = mp
        self._send = send
        self._clock = clock  # (offset, rtt) of the agent's clock estimate
        self._rundir: RunDir | None = None
        self._workers: dict[int, WorkerHandle] = {}
        self._ready_sent = False
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
        rundir = RunDir(self.job.run_id)
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
                stats_endpoint=self._stats_endpoint, run_dir=str(self._rundir.path))))
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
        if isinstance(msg, WorkerReady) and msg.worker == h.index:
            h.ready = True
            h.notes = msg.notes
            for note in msg.notes:  # the master shows them to the user
                log.info("run %s: %s", self.run_id, note)
            if not self._ready_sent and len(self._workers) == len(self.job.worker_ids) \
                    and all(w.ready for w in self._workers.values()):
                self._ready_sent = True
                offset, rtt = self._clock()
                notes = [n for w in self._workers.values() for n in w.notes]
                if len(notes) > MAX_NOTES:
                    notes[MAX_NOTES - 1:] = [f"... and {len(notes) - MAX_NOTES + 1} more "
                                             f"notes in agent {self._agent}'s log"]
                self._send(AgentReady(workers=len(self._workers), clock_offset=offset,
                                      rtt=rtt, notes=notes))
                log.info("run %s: all %d worker(s) ready", self.run_id, len(self._workers))
        elif isinstance(msg, JobFailed) and msg.worker == h.index:
            h.failed = True
            log.info("run %s: worker %d: the client failed before load", self.run_id, h.index)
            self._send(msg)
        elif isinstance(msg, ClientsFailing) and msg.worker == h.index:
            log.info("run %s: worker %d: every client fails: %s", self.run_id, h.index,
                     msg.error)
            self._send(msg)
        elif isinstance(msg, Final) and msg.worker == h.index:
            h.final = msg
            self._send(msg)

    def _on_exit(self, h: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(h.process.sentinel)
        self._on_pipe(h)  # what it wrote before exiting
        with contextlib.suppress(OSError, ValueError):
            loop.remove_reader(h.conn.fileno())
        h.process.join(0)
        h.exited = True
        code = h.process.exitcode if h.process.exitcode is not None else -1
        if h.final is None and not h.failed:
            log.error("run %s: worker %d exited (code %s) without its totals",
                      self.run_id, h.index, code)
            self._send(WorkerLost(worker=h.index, exitcode=code,
                                  detail=f"worker exited with code {code} before its totals"))
        else:
            log.info("run %s: worker %d finished (code %s)", self.run_id, h.index, code)
        self._exits.set()

    async def _all_watched_exited(self) -> None:
        while not all(h.exited for h in self._workers.values()):
            self._exits.clear()
            await self._exits.wait()

    # -- from the master --------------------------------------------------------------
    def forward(self, msg: Start | Stop | Abort) -> None:
        if isinstance(msg, Stop | Abort):
            self._pending = msg
        data = encode_joined(msg)
        for h in self._workers.values():
            if not h.exited:
                with contextlib.suppress(OSError):
                    h.conn.send_bytes(data)

    def ack(self, worker: int) -> None:
        h = self._workers.get(worker)
        if h is not None:
            h.acked = True

    def resend_unacked(self) -> None:
        for h in self._workers.values():
            if h.final is not None and not h.acked:
                self._send(h.final)

    @property
    def settled(self) -> bool:
        """Every worker has exited and each one's totals were acknowledged (or lost)."""
        return all(h.exited and (h.final is None or h.acked) for h in self._workers.values())

    async def close(self) -> None:
        """Abort what still runs, wait briefly, kill the rest, remove the run directory."""
        self._closing = True
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        alive = [h for h in self._workers.values() if not h.exited]
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
