"""A worker process: one uvloop loop running many clients, publishing a delta a second.

It talks to its agent over a pipe (job, READY/JOB_FAILED, START, STOP/ABORT, FINAL)
and publishes HELLO and DELTA messages straight to the master's stats socket. When
the pipe closes (the agent died) it aborts at once and exits: a load generator never
keeps firing without its supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import select
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import uvloop
import zmq

from loadagent.arrivals import Arrivals, OpenScheduler
from loadagent.client_file import (
    describe_failure,
    inside,
    load_client_class,
    load_client_classes,
    run_global_init,
)
from loadagent.early_failure import EarlyFailure
from loadagent.scheduler import Budget, ClientScheduler, GraceReport, Pause, SchedulerGroup
from protocol.calls import call_names
from protocol.client import ClientProtocol
from protocol.exitcodes import AgentExitCode
from protocol.fdlimit import descriptor_shortfall, raise_open_files_limit
from protocol.plan import (
    RateProfile,
    arrival_workers,
    class_counts,
    class_sequence,
    client_offsets,
    client_windows,
    clients_of,
)
from protocol.security import curve_of
from protocol.stats import Totals
from protocol.wire.channel import stats_pub
from protocol.wire.codec import (
    Message,
    WireError,
    decode_joined,
    encode_joined,
    encode_stats,
    expect,
)
from protocol.wire.limits import CONTROL_MAX, ERROR_TEXT_MAX, PIPE_MAX
from protocol.wire.messages import (
    Abort,
    ClientsFailing,
    Delta,
    Final,
    Hello,
    JobFailed,
    Start,
    Stop,
    WorkerJob,
    WorkerReady,
)

HELLO_EVERY = 0.1
LAG_PROBE_EVERY = 0.1
# well inside the master's wait for totals after an abort (loadmaster ABORT_WAIT, 2 s)
SHUTDOWN_TIMEOUT_ON_ABORT = 1.0
AGENT_GONE_GRACE = 2.0


def worker_main(conn: Connection) -> None:
    """Entry point of a worker process (started by the agent's forkserver)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the master
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _exit_when_agent_gone(conn.fileno())
    fd_limit = raise_open_files_limit()
    try:
        job = expect(decode_joined(conn.recv_bytes(PIPE_MAX)), WorkerJob)
    except (EOFError, OSError, WireError) as e:
        print(f"worker: no usable job from the agent: {e}", file=sys.stderr)
        return
    uvloop.run(Worker(conn, job, fd_limit).run())


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
                    os._exit(AgentExitCode.AGENT_GONE)

    threading.Thread(target=watch, name="agent-watch", daemon=True).start()


class AbortLatch:
    """A worker's abort, set once: the first reason (an ABORT, or the agent gone) stands,
    and whoever waits for it (the clients' shutdown, cut short) wakes."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._event = asyncio.Event()

    def set(self, reason: str) -> str:
        """Abort, unless already aborted; the reason that stands."""
        if self.reason is None:
            self.reason = reason
            self._event.set()
        return self.reason

    async def wait(self) -> None:
        await self._event.wait()


class Worker:
    def __init__(self, conn: Connection, wj: WorkerJob, fd_limit: int = -1) -> None:
        self._conn = conn
        self._wj = wj
        self._job = wj.job
        self._topic = wj.job.run_id.encode("ascii")
        self._fd_limit = fd_limit
        self._clients = clients_of(wj.worker, wj.job.total_workers, wj.job.users)
        self._agent_alive = True
        self._start: asyncio.Future[float] | None = None
        self._done: asyncio.Event | None = None
        self._aborted = AbortLatch()
        self._stopped_at = 0.0  # wall clock of the stop (run_time, STOP, ABORT); 0: none
        self._early = EarlyFailure(self._clients)
        self._sched: SchedulerGroup | None = None
        self._open: list[OpenScheduler] = []  # the open model's parts of ``_sched``
        self._delta = Totals()
        self._cumulative = Totals()
        self._seq = 0
        self._next_second = 1
        self._start_lag = 0.0
        self._t0_perf_ns = 0
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
                data = self._conn.recv_bytes(CONTROL_MAX)
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
        if self._done is not None and not self._done.is_set():
            self._stopped_at = time.time()
            self._done.set()

    def _run_time_reached(self, t0: float) -> None:
        if self._done is not None and self._done.is_set():
            return  # stopped earlier (STOP, ABORT): that moment stands
        self._request_stop()
        # the loop's timers may fire a millisecond early: the stop is at run_time, not before
        self._stopped_at = max(self._stopped_at, t0 + self._job.run_time)

    def _abort(self, reason: str) -> None:
        reason = self._aborted.set(reason)
        if self._sched is not None:
            self._sched.abort(reason)
        self._request_stop()

    # -- the run ----------------------------------------------------------------------
    def _arm(self) -> None:
        """The start (T0, or cancelled by an earlier STOP) and the stop, on the running loop."""
        self._start = asyncio.get_running_loop().create_future()
        self._done = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._arm()
        loop.add_reader(self._conn.fileno(), self._on_pipe)
        # SIGTERM on a worker (systemd signals the whole group) is a STOP, as on the agent
        loop.add_signal_handler(signal.SIGTERM, self._request_stop)
        try:
            classes = await self._prepare()
            if classes is None:
                return
            ctx = zmq.Context()
            pub = stats_pub(ctx, self._wj.stats_endpoint, curve_of(self._wj.curve))
            try:
                self._send(WorkerReady(worker=self._wj.worker, notes=self._notes()))
                t0 = await self._hello_until_start(pub)
                if t0 is not None:
                    await self._run_load(classes, pub, t0)
                self._publish(pub)
                self._send(self._final(t0))
            finally:
                pub.close()
                ctx.term()
        finally:
            if self._agent_alive:
                loop.remove_reader(self._conn.fileno())
            self._conn.close()

    async def _prepare(self) -> list[type[ClientProtocol]] | None:
        """Import the client and run global_init; on failure report JOB_FAILED."""
        job = self._job
        try:
            os.chdir(self._wj.run_dir)
            sys.path.insert(0, self._wj.run_dir)
            path = inside(Path(self._wj.run_dir), job.class_file)
            classes = load_client_classes(path, job.classes) if job.classes else [
                load_client_class(path, job.class_name)]
            # a named step may not count under a class's name (it would leave the totals)
            call_names.update(cls.name or cls.__name__ for cls in classes)
            for cls in dict.fromkeys(classes):
                await run_global_init(cls, job.custom_conf)
        except BaseException as e:  # SystemExit from user code is a failure too
            if isinstance(e, KeyboardInterrupt | asyncio.CancelledError):
                raise
            text = describe_failure(e, self._wj.run_dir)
            self._send(JobFailed(worker=self._wj.worker, error=text[-ERROR_TEXT_MAX:]))
            return None
        return classes

    def _notes(self) -> list[str]:
        """What the user must know before the load starts."""
        short = descriptor_shortfall(self._clients, self._fd_limit)
        if not short:
            return []
        return [f"agent {self._wj.agent}, worker {self._wj.worker}: {self._clients} clients "
                f"need about {self._fd_limit + short} open files (a connection each), "
                f"{short} more than its limit of {self._fd_limit} (RLIMIT_NOFILE, already "
                f"raised to the hard limit); calls that cannot open a connection will fail "
                f"with 'Too many open files'. Raise the hard limit (ulimit -Hn; LimitNOFILE= "
                f"under systemd; docker run --ulimit nofile=N) or spread the clients over "
                f"more agents"]

    def _final(self, t0: float | None) -> Final:
        stopped_at = max(0.0, self._stopped_at - t0) if t0 is not None and self._stopped_at \
            else 0.0
        last_end, started, grace = stopped_at, 0, GraceReport()
        if self._sched is not None:  # the load ran
            started, grace = self._sched.started, self._sched.grace
            if self._sched.last_call_end_ns:
                last_end = max(last_end, (self._sched.last_call_end_ns - self._t0_perf_ns) / 1e9)
        return Final(
            worker=self._wj.worker, totals=self._cumulative, last_end=last_end, clients=started,
            aborted=self._aborted.reason is not None, start_lag=self._start_lag,
            stopped_at=stopped_at, grace=grace.seconds, grace_finished=grace.finished,
            grace_cancelled=grace.cancelled)

    async def _hello_until_start(self, pub: zmq.Socket[bytes]) -> float | None:
        assert self._start is not None
        hello = encode_stats(self._topic, Hello(agent=self._wj.agent, worker=self._wj.worker))
        while not self._start.done():
            pub.send_multipart(hello)
            await asyncio.wait([self._start], timeout=HELLO_EVERY)
        return None if self._start.cancelled() else self._start.result()

    async def _run_load(self, classes: list[type[ClientProtocol]], pub: zmq.Socket[bytes],
                        t0: float) -> None:
        """Run clients from wall time ``t0`` until run_time, STOP or ABORT."""
        assert self._done is not None
        loop = asyncio.get_running_loop()
        job = self._job
        now = time.time()
        loop_t0 = loop.time() + (t0 - now)
        self._t0_perf_ns = time.perf_counter_ns() + int((t0 - now) * 1e9)
        self._start_lag = max(0.0, now - t0)
        self._cpu_mark = time.process_time()  # the first delta's CPU is the load's, not start-up's
        sched = self._sched = self._scheduler(classes, loop_t0)
        if self._aborted.reason is not None:
            sched.abort(self._aborted.reason)
        stop_timer = loop.call_at(loop_t0 + job.run_time, self._run_time_reached, t0)
        helpers = [loop.create_task(self._publish_every_second(pub, loop_t0)),
                   loop.create_task(self._probe_lag())]
        try:
            await self._done.wait()
            if self._aborted.reason is not None:
                sched.abort(self._aborted.reason)
            await sched.stop(0.0 if self._aborted.reason is not None else job.stop_grace)
            await self._shutdown_clients(sched)
        finally:
            stop_timer.cancel()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    def _scheduler(self, classes: list[type[ClientProtocol]],
                   loop_t0: float) -> SchedulerGroup:
        """The clients' schedulers, started, one per class: the closed model's
        (``users``), or the open model's (``arrival_rate``)."""
        job = self._job
        weights = job.weights or [1]
        budget = None
        if job.iterations:
            # over the workers that run clients (w < users), exactly
            takers = min(job.total_workers, job.users)
            budget = Budget(clients_of(self._wj.worker, takers, job.iterations)
                            if self._wj.worker < takers else 0, self._request_stop)
        if job.arrival_rate:
            pools = class_counts(job.users, weights)
            # (split on its own, a class could get more of them than of the pool)
            pres = [min(pre, pool) for pre, pool in
                    zip(class_counts(job.pre_allocated_users, weights), pools, strict=True)]
            its = class_counts(job.iterations, weights)
            parts = [s for c, cls in enumerate(classes)
                     if (s := self._open_scheduler(cls, c, weights[c] / sum(weights),
                                                   pools[c], pres[c], its[c])) is not None]
            if job.iterations:
                self._when_all_done(parts)
            self._open = parts
            return SchedulerGroup(parts)
        closed = self._closed_schedulers(classes, weights, loop_t0, budget)
        if budget is not None:
            budget.check()  # a share of 0 (no client here, or fewer iterations than workers)
        return SchedulerGroup(closed)

    def _open_scheduler(self, cls: type[ClientProtocol], c: int, share: float, pool: int,
                        pre_allocated: int, iterations: int) -> OpenScheduler | None:
        """Class ``c``'s part of the open model's schedule on this worker: ``share`` of
        the rate, and a pool (the whole run's without a mix); None when it has no client.
        With iterations, its part of them caps its arrivals."""
        job, w = self._job, self._wj.worker
        clients = clients_of(w, job.total_workers, pool)
        if not clients or (job.iterations and not iterations):
            return None
        profile = RateProfile(job.arrival_rate * share, job.time_unit,
                              [(d, t * share) for d, t in job.stages])
        arrivals = Arrivals(
            t0_ns=self._t0_perf_ns, run_time=job.run_time, rate=job.arrival_rate * share,
            time_unit=job.time_unit, worker=w,
            workers=arrival_workers(job.total_workers, pool),
            poisson=job.arrivals == "poisson",
            seed=f"{job.run_id}:{w}" + (f":{c}" if c else ""), profile=profile,
            iterations=iterations)
        pre = clients_of(w, job.total_workers, pre_allocated)
        sched = OpenScheduler(cls, job.host, self._delta, self._early, arrivals, clients,
                              pre, job.max_schedule_lag)
        sched.start_pool(pre)
        return sched

    def _when_all_done(self, parts: list[OpenScheduler]) -> None:
        """Stop once every part's schedule has ended (iterations: before run_time)."""
        left = [len(parts)]

        def one_done() -> None:
            left[0] -= 1
            if not left[0]:
                self._request_stop()

        if not parts:
            asyncio.get_running_loop().call_soon(self._request_stop)
        for part in parts:
            part.on_done = one_done
            part.check_done()

    def _closed_schedulers(self, classes: list[type[ClientProtocol]], weights: list[int],
                           loop_t0: float, budget: Budget | None) -> list[ClientScheduler]:
        """This worker's clients k (k = worker, worker + W, ...) by class: started at
        ``k / hatch_rate``, or in their stage windows."""
        job, w = self._job, self._wj.worker
        ks = range(w, job.users, job.total_workers)
        if job.stages:
            windows = client_windows(w, job.total_workers, [(d, t) for d, t in job.stages])
            # (a client whose every window is empty, a target reached for no time, never
            # starts)
            offsets = [spans[0][0] if spans else math.inf for spans in windows]
        else:
            windows = []
            offsets = client_offsets(w, job.total_workers, job.users, job.hatch_rate)
        of_class = class_sequence(job.users, weights) if len(classes) > 1 else None
        pause = Pause(job.wait_time, max(job.wait_max, job.wait_time), job.pacing)
        out = []
        for c, cls in enumerate(classes):
            mine = [i for i, k in enumerate(ks)
                    if (of_class is None or of_class[k] == c) and offsets[i] != math.inf]
            if not mine and len(classes) > 1:
                continue
            sched = ClientScheduler(cls, job.host, job.wait_time, self._delta, self._early,
                                    pause=pause, budget=budget)
            order = sorted(mine, key=offsets.__getitem__)
            sched.start(loop_t0, [offsets[i] for i in order],
                        [windows[i] for i in order] if windows else ())
            out.append(sched)
        return out

    async def _shutdown_clients(self, sched: SchedulerGroup) -> None:
        """shutdown() every client; an ABORT cuts it short, so the totals still go out."""
        if self._aborted.reason is not None:
            await sched.shutdown_clients(SHUTDOWN_TIMEOUT_ON_ABORT)
            return
        shutdown = asyncio.ensure_future(
            sched.shutdown_clients(max(self._job.stop_grace, 1.0)))
        aborted = asyncio.ensure_future(self._aborted.wait())
        await asyncio.wait({shutdown, aborted}, return_when=asyncio.FIRST_COMPLETED)
        aborted.cancel()
        if not shutdown.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shutdown, SHUTDOWN_TIMEOUT_ON_ABORT)
        await asyncio.gather(aborted, return_exceptions=True)

    async def _publish_every_second(self, pub: zmq.Socket[bytes], loop_t0: float) -> None:
        """The delta of second k covers (T0 + k - 1, T0 + k]; a late loop skips seconds."""
        loop = asyncio.get_running_loop()
        reported = False
        while True:
            await asyncio.sleep(max(0.0, loop_t0 + self._next_second - loop.time()))
            self._publish(pub)
            self._next_second = max(self._next_second, int(loop.time() - loop_t0) + 1)
            if not reported and self._early.verdict is not None:
                reported = True
                self._send(ClientsFailing(worker=self._wj.worker,
                                          error=self._early.verdict[:ERROR_TEXT_MAX]))

    def _publish(self, pub: zmq.Socket[bytes]) -> None:
        """Publish what happened since the last delta and fold it into the totals."""
        second = self._next_second
        self._next_second += 1
        cpu = time.process_time()
        now_ns = time.perf_counter_ns()
        behind = max((part.take_behind(now_ns) for part in self._open), default=0)
        msg = Delta(agent=self._wj.agent, worker=self._wj.worker, seq=self._seq,
                    second=second, clients=self._sched.running if self._sched else 0,
                    totals=self._delta, cpu_seconds=cpu - self._cpu_mark,
                    loop_lag=self._lag_max, sched_lag=max(behind, 0) / 1e9)
        frames = encode_stats(self._topic, msg)
        self._cumulative.merge(self._delta)
        self._delta.reset()
        self._cpu_mark = cpu
        self._lag_max = 0.0
        self._seq += 1
        pub.send_multipart(frames, flags=zmq.NOBLOCK)  # PUB drops at HWM; seq shows gaps

    async def _probe_lag(self) -> None:
        """How late the loop runs a callback due on a fixed schedule (a schedule relative
        to the last wake-up would fall into step with a client that blocks the loop)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + LAG_PROBE_EVERY
        while True:
            await asyncio.sleep(due - loop.time())
            now = loop.time()
            lag = now - due
            if lag > self._lag_max:
                self._lag_max = lag
            due += LAG_PROBE_EVERY
            if due <= now:  # blocked past whole periods: the next one from now
                due = now + LAG_PROBE_EVERY
