"""A worker process: one uvloop loop running many clients, publishing a delta a second.

It talks to its agent over a pipe (job, READY/JOB_FAILED, START, STOP/ABORT, FINAL)
and publishes HELLO and DELTA messages straight to the master's stats socket. When
the pipe closes (the agent died) it aborts at once and exits: a load generator never
keeps firing without its supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import uvloop
import zmq

from loadagent.client_loader import load_client_class, run_global_init
from loadagent.scheduler import ClientScheduler
from protocol.client import ClientProtocol
from protocol.codec import Message, WireError, decode_joined, encode_joined, encode_stats, expect
from protocol.messages import Abort, Delta, Final, Hello, JobFailed, Ready, Start, Stop, WorkerJob
from protocol.plan import user_offsets, users_of
from protocol.stats import Totals

HELLO_EVERY = 0.1
LAG_PROBE_EVERY = 0.1
# well inside the master's wait for totals after an abort (loadmaster ABORT_WAIT, 2 s)
SHUTDOWN_TIMEOUT_ON_ABORT = 1.0
PIPE_LIMIT = 1024 * 1024
AGENT_GONE_GRACE = 2.0
EXIT_AGENT_GONE = 70


def worker_main(conn: Connection) -> None:
    """Entry point of a worker process (started by the agent's forkserver)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _exit_when_agent_gone(conn.fileno())
    try:
        job = expect(decode_joined(conn.recv_bytes(PIPE_LIMIT)), WorkerJob)
    except (EOFError, OSError, WireError) as e:
        print(f"worker: no usable job from the agent: {e}", file=sys.stderr)
        return
    uvloop.run(Worker(conn, job).run())


def _exit_when_agent_gone(fd: int) -> None:
    """A last resort, from a thread: exit soon after the agent's end of the pipe closes.

    The event loop reads the pipe and aborts cleanly on EOF; this catches the worker
    whose loop is stuck (a synchronous global_init or execute). PR_SET_PDEATHSIG
    cannot do it: the parent is the forkserver, which every worker keeps alive.
    """

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLRDHUP)
        while True:
            for _, events in poller.poll():
                if events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR
                             | select.POLLNVAL):
                    time.sleep(AGENT_GONE_GRACE)  # the loop's clean abort comes first
                    os._exit(EXIT_AGENT_GONE)

    threading.Thread(target=watch, name="agent-watch", daemon=True).start()


class Worker:
    def __init__(self, conn: Connection, wj: WorkerJob) -> None:
        self._conn = conn
        self._wj = wj
        self._job = wj.job
        self._topic = wj.job.run_id.encode("ascii")
        self._agent_alive = True
        self._start: asyncio.Future[float] | None = None
        self._done: asyncio.Event | None = None
        self._aborted = False
        self._abort_reason = ""
        self._abort_event = asyncio.Event()
        self._sched: ClientScheduler | None = None
        self._interval = Totals()
        self._cumulative = Totals()
        self._seq = 0
        self._next_interval = 1
        self._start_lag = 0.0
        self._lag_max = 0.0
        self._cpu_mark = time.process_time()

    # -- the pipe to the agent ------------------------------------------------------
    def _send(self, msg: Message) -> None:
        if not self._agent_alive:
            return
        try:
            self._conn.send_bytes(encode_joined(msg))
        except OSError:
            self._agent_gone()

    def _on_pipe(self) -> None:
        try:
            while self._conn.poll():
                data = self._conn.recv_bytes(PIPE_LIMIT)
                try:
                    self._handle(decode_joined(data))
                except WireError as e:
                    print(f"worker {self._wj.worker}: bad message from agent: {e}", file=sys.stderr)
        except (EOFError, OSError):
            self._agent_gone()

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Start):
            if self._start is not None and not self._start.done():
                self._start.set_result(msg.t0)
        elif isinstance(msg, Stop):
            self._request_stop()
        elif isinstance(msg, Abort):
            self._abort(msg.reason)

    def _agent_gone(self) -> None:
        if self._agent_alive:
            self._agent_alive = False
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
            self._abort("the agent is gone")

    def _request_stop(self) -> None:
        if self._start is not None and not self._start.done():
            self._start.cancel()
        if self._done is not None:
            self._done.set()

    def _abort(self, reason: str) -> None:
        self._aborted = True
        self._abort_reason = reason
        self._abort_event.set()
        if self._sched is not None:
            self._sched.abort(reason)
        self._request_stop()

    # -- the run ----------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._start = loop.create_future()
        self._done = asyncio.Event()
        loop.add_reader(self._conn.fileno(), self._on_pipe)
        try:
            cls = await self._prepare()
            if cls is None:
                return
            ctx = zmq.Context()
            pub = ctx.socket(zmq.PUB)
            pub.linger = 2000
            if self._wj.stats_endpoint.startswith("tcp://["):
                pub.setsockopt(zmq.IPV6, 1)
            pub.connect(self._wj.stats_endpoint)
            try:
                self._send(Ready(workers=1, clock_offset=0.0, rtt=0.0))
                t0 = await self._hello_until_start(pub)
                last_end = 0.0
                if t0 is not None:
                    last_end = await self._run_load(cls, pub, t0)
                self._publish(pub)
                self._send(Final(
                    worker=self._wj.worker, totals=self._cumulative, last_end=last_end,
                    clients=users_of(self._wj.worker, self._job.total_workers, self._job.users),
                    aborted=self._aborted, start_lag=self._start_lag))
            finally:
                pub.close()
                ctx.term()
        finally:
            if self._agent_alive:
                loop.remove_reader(self._conn.fileno())
            self._conn.close()

    async def _prepare(self) -> type[ClientProtocol] | None:
        """Import the client and run global_init; on failure report JOB_FAILED."""
        job = self._job
        try:
            os.chdir(self._wj.run_dir)
            sys.path.insert(0, self._wj.run_dir)
            cls = load_client_class(Path(job.class_file), job.class_name)
            await run_global_init(cls, job.custom_conf)
        except BaseException as e:  # SystemExit from user code is a failure too
            if isinstance(e, KeyboardInterrupt | asyncio.CancelledError):
                raise
            text = "".join(traceback.format_exception(e))
            self._send(JobFailed(worker=self._wj.worker, error=text[-20000:]))
            return None
        return cls

    async def _hello_until_start(self, pub: zmq.Socket[bytes]) -> float | None:
        assert self._start is not None
        hello = encode_stats(self._topic, Hello(agent=self._wj.agent, worker=self._wj.worker))
        while not self._start.done():
            pub.send_multipart(hello)
            await asyncio.wait([self._start], timeout=HELLO_EVERY)
        return None if self._start.cancelled() else self._start.result()

    async def _run_load(self, cls: type[ClientProtocol], pub: zmq.Socket[bytes],
                        t0: float) -> float:
        """Run clients from wall time ``t0`` until run_time, STOP or ABORT.

        Returns seconds from T0 to the end of the last call.
        """
        assert self._done is not None
        loop = asyncio.get_running_loop()
        job = self._job
        loop_t0 = loop.time() + (t0 - time.time())
        self._start_lag = max(0.0, time.time() - t0)
        sched = self._sched = ClientScheduler(cls, job.host, job.wait_time, self._interval)
        sched.start(loop_t0, user_offsets(self._wj.worker, job.total_workers, job.users,
                                          job.hatch_rate))
        if self._aborted:
            sched.abort(self._abort_reason)
        stop_timer = loop.call_at(loop_t0 + job.run_time, self._request_stop)
        helpers = [loop.create_task(self._publish_every_second(pub, loop_t0)),
                   loop.create_task(self._probe_lag())]
        try:
            await self._done.wait()
            if self._aborted:
                sched.abort(self._abort_reason)
            await sched.stop(0.0 if self._aborted else job.stop_grace)
            last_end = max(0.0, time.time() - t0)
            await self._shutdown_clients(sched)
        finally:
            stop_timer.cancel()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        return last_end

    async def _shutdown_clients(self, sched: ClientScheduler) -> None:
        """shutdown() every client; an ABORT cuts it short, so the totals still go out."""
        if self._aborted:
            await sched.shutdown_clients(SHUTDOWN_TIMEOUT_ON_ABORT)
            return
        shutdown = asyncio.ensure_future(
            sched.shutdown_clients(max(self._job.stop_grace, 1.0)))
        aborted = asyncio.ensure_future(self._abort_event.wait())
        await asyncio.wait({shutdown, aborted}, return_when=asyncio.FIRST_COMPLETED)
        aborted.cancel()
        if not shutdown.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shutdown, SHUTDOWN_TIMEOUT_ON_ABORT)
        await asyncio.gather(aborted, return_exceptions=True)

    async def _publish_every_second(self, pub: zmq.Socket[bytes], loop_t0: float) -> None:
        """Delta number k covers (T0 + k - 1, T0 + k]; a late loop skips indexes."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.0, loop_t0 + self._next_interval - loop.time()))
            self._publish(pub)
            self._next_interval = max(self._next_interval, int(loop.time() - loop_t0) + 1)

    def _publish(self, pub: zmq.Socket[bytes]) -> None:
        """Publish what happened since the last delta and fold it into the totals."""
        interval = self._next_interval
        self._next_interval += 1
        cpu = time.process_time()
        msg = Delta(agent=self._wj.agent, worker=self._wj.worker, seq=self._seq,
                    interval=interval, clients=self._sched.running if self._sched else 0,
                    totals=self._interval, cpu_seconds=cpu - self._cpu_mark,
                    loop_lag=self._lag_max)
        frames = encode_stats(self._topic, msg)
        self._cumulative.merge(self._interval)
        self._interval.reset()
        self._cpu_mark = cpu
        self._lag_max = 0.0
        self._seq += 1
        pub.send_multipart(frames, flags=zmq.NOBLOCK)  # PUB drops at HWM; seq shows gaps

    async def _probe_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PROBE_EVERY)
            lag = loop.time() - before - LAG_PROBE_EVERY
            if lag > self._lag_max:
                self._lag_max = lag
