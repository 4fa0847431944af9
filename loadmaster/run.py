"""One run, step by step (docs/architecture.md, "The run"): bind, agents, plan, job,
READY and HELLO from everyone, START, live blocks, STOP, final totals, report.

Signals (SIGINT = Ctrl-C, and SIGTERM, which docker stop, systemd and CI timeouts send)
only set ``should_exit`` (the first: a graceful STOP, the final block still printed) or
``force_exit`` (the second: an ABORT, at most ``ABORT_WAIT`` seconds more for totals,
the block marked incomplete); the run loop acts on them. Exit 130 or 143 after that.

At the end every agent gets RUN_DONE and the master waits (briefly) for each one's
RUN_DONE_ACK before it closes its socket, so nothing sent before is lost.

With ``--out`` the result file (loadmaster/result.py), and the reports of ``--html``,
``--csv`` and ``--json`` (loadmaster/outputs.py), are written last, once everything is
closed, on every path: a completed run, a failure (``RunFailed``), an interrupt, an
internal error. A failure to write one turns exit 0 into 1 and leaves any other code.

What the run shows meanwhile (live block, progress line, dashboard, /metrics) is
``RunViews`` (loadmaster/run_views.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
import time
from collections.abc import Callable
from typing import TextIO

import zmq
import zmq.asyncio

from loadmaster.aggregator import Aggregator
from loadmaster.auth import AgentAuth
from loadmaster.bundle import Bundle
from loadmaster.config import Config
from loadmaster.console import (
    BlockPrinter,
    FinalView,
    format_final,
)
from loadmaster.coordinator import AgentRecord, AgentState, Coordinator
from loadmaster.dashboard import Dashboard, Feed, schedule_view
from loadmaster.jobs import JobTooLarge, check_sizes, job_frames, plan_workers
from loadmaster.local_agent import LocalAgent
from loadmaster.metrics import MetricsServer
from loadmaster.outputs import save_outputs
from loadmaster.report import RunEnd, final_report
from loadmaster.result import Ending, build_result
from loadmaster.run_options import RunFailed, RunOptions
from loadmaster.run_views import LIVE_DELAY, RunViews
from loadmaster.thresholds import Verdict, judge, judge_live
from protocol.exitcodes import ExitCode, first, for_signal
from protocol.plan import clients_of
from protocol.security import Curve
from protocol.wire.channel import host_port
from protocol.wire.messages import RUN_ID_LEN, Abort, RunDone, Start, Stop

log = logging.getLogger("loadmaster")
START_DELAY = 0.5
ABORT_WAIT = 2.0
RUN_DONE_WAIT = 2.0  # for the agents' RUN_DONE_ACK before the socket closes
CLOSE_LINGER_MS = 500
FINAL_MARGIN = 10.0  # beyond run_time + grace + shutdown, before missing totals count as lost
# With --out: how long the last deltas (sent just before the finals) may take to arrive
SERIES_WAIT = 1.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Run(RunViews):
    def __init__(self, cfg: Config, bundle: Bundle, opts: RunOptions, out: TextIO) -> None:
        self.cfg = cfg
        self.bundle = bundle
        self.opts = opts
        self._printer = BlockPrinter(out, quiet=opts.quiet)
        self.run_id = secrets.token_hex(RUN_ID_LEN // 2)
        self._changed = asyncio.Event()
        self.should_exit = False  # the first SIGINT/SIGTERM: stop gracefully
        self.force_exit = False  # the second: abort
        self._signal: int | None = None  # the first signal, for the exit code
        self._ctx = zmq.asyncio.Context()
        embedded = cfg.agents == 0
        self._local: LocalAgent | None = None
        token: str | None = None
        keys = opts.keys
        curve = None if keys is None else Curve(keys.pair)
        self._auth: AgentAuth | None = None
        local_keys = None
        if keys is not None:
            allowed = keys.allowed
            if embedded:  # a pair for this run's own agent, and no other
                public, secret = zmq.curve_keypair()
                allowed = {public: "the embedded agent"}
                local_keys = (public, secret, keys.pair.public)
            self._auth = AgentAuth(self._ctx, allowed)
        if embedded:
            self._local = LocalAgent(cfg.worker, opts.cpu_list, local_keys)
            token = self._local.token
        self.coord = Coordinator(self._ctx, opts.bind_host, 0 if embedded else opts.bind_port,
                                 wanted=cfg.agents or 1, token=token, on_change=self._changed.set,
                                 curve=curve)
        self.agg = Aggregator(self._ctx, opts.bind_host, self.run_id, curve,
                              saturation=cfg.generator)
        self._agents: list[AgentRecord] = []
        self._total_workers = 0
        self._crashed: BaseException | None = None
        self._t0 = 0.0
        self._client_failure: str | None = None
        self._view: FinalView | None = None  # the final block's, once printed
        self._stopping = ""  # why and how the run is stopping, once it is
        self._dash_stop = False  # the dashboard's Stop button asked for the stop
        # thresholds judged live: the last second judged, the verdicts then, and the
        # failed rule with abort_on_fail that stopped the run
        self._judged = 0
        self._live_verdicts: list[Verdict | None] = []
        self._threshold_stop: Verdict | None = None
        self._signalled = asyncio.Event()  # every SIGINT/SIGTERM (to end --dash-keep)
        self._dash = Dashboard(opts.dash, self._on_dash_stop) if opts.dash.enabled else None
        self._feed = Feed(cfg, opts.mask, self.run_id) if self._dash is not None else None
        self._phase = "waiting"  # for the dashboard: waiting, preparing, running, finished
        self._metrics = MetricsServer(*opts.metrics, self._metrics_state) \
            if opts.metrics is not None else None
        self._code: int | None = None  # the exit code, once the final block is printed

    # -- helpers ------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        self._signalled.set()
        if self.should_exit:
            self.force_exit = True
        else:
            self._signal = signum
            print(f"\ninterrupted ({signal.Signals(signum).name}): stopping gracefully "
                  f"(Ctrl-C or SIGTERM again to abort)", file=sys.stderr, flush=True)
        self.should_exit = True
        self._changed.set()

    def _on_channel_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._crashed = task.exception()
            self._changed.set()

    def _check_channels(self) -> None:
        """Our own error in a socket task is an internal error (exit 1), never a hang."""
        if self._crashed is not None:
            raise self._crashed

    async def _wait(self, done: Callable[[], bool], timeout: float | None,
                    interruptible: bool = True, tick: float = 0.5) -> bool:
        """Wait until ``done()`` (True), ``timeout`` (False), or a signal (False)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not done():
            self._check_channels()
            if interruptible and self.should_exit:
                return False
            remaining = tick if deadline is None else min(tick, deadline - loop.time())
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def _interrupted(self, when: str) -> RunFailed:
        if self._signal is None:  # the dashboard's Stop
            return RunFailed(ExitCode.INTERRUPTED, f"stopped from the dashboard {when}")
        return RunFailed(for_signal(self._signal), f"interrupted {when}")

    # -- the run ------------------------------------------------------------------------
    async def execute(self) -> int:
        """The run, then the result file (``--out``) on every path; the exit code."""
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:  # signals only set flags until the very end: the file is written whole
            try:
                code = await self._execute()
            except RunFailed as e:
                self._save_result(e.code, str(e))
                self._publish(status=str(e))
                raise
            except Exception as e:
                self._save_result(ExitCode.INTERNAL,
                                  f"internal error: {type(e).__name__}: {e}")
                raise
            error = None
            if self._client_failure is not None:
                error = f"every client fails the same way before doing any I/O: " \
                        f"{self._client_failure}"
            if not self._save_result(code, error) and code == ExitCode.OK:
                code = int(ExitCode.INTERNAL)
            await self._keep_serving()
            return code
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
            if self._dash is not None:
                await self._dash.close()
            if self._metrics is not None:
                await self._metrics.close()
            self._printer.close()

    def _save_result(self, code: int, error: str | None) -> bool:
        """Write the result file and the reports asked for; False when one could not be
        written."""
        ending = Ending(run_id=self.run_id, t0=self._t0 or None, end=time.time(),
                        exit_code=code, signal=self._signal, error=error)
        return save_outputs(self.opts.outputs, lambda: build_result(
            self.cfg, self.opts.mask, ending, view=self._view,
            agents=self._agents or self.coord.accepted, series=self.agg.series))

    async def _execute(self) -> int:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        try:
            if self._auth is not None:
                self._auth.start()  # before any CURVE socket: it guards both
            try:
                endpoint = self.coord.bind()
                self.coord.stats_port = self.agg.bind()
            except zmq.ZMQError as e:
                where = host_port(self.opts.bind_host, self.opts.bind_port or None)
                raise RunFailed(ExitCode.USAGE, f"--bind {where}: {e}") from None
            if self._auth is not None:
                log.info("CURVE: control and stats channels accept %d agent key(s)",
                         len(self._auth.allowed))
            await self._start_dashboard()
            await self._start_metrics()
            tasks = [loop.create_task(self.coord.serve()), loop.create_task(self.agg.serve())]
            if self._dash is not None:
                tasks.append(loop.create_task(self._dash_loop()))
            if self._printer.tty:
                tasks.append(loop.create_task(self._progress_loop()))
            for task in tasks:
                task.add_done_callback(self._on_channel_done)
            if self._local is not None:
                self._local.start(endpoint)
            else:
                self._printer.message(f"waiting for {self.cfg.agents} agent(s) on {endpoint} "
                                      f"(up to {self.cfg.agent_timeout:g}s)")
            await self._gather_agents()
            self._phase = "preparing"
            await self._send_jobs()
            await self._wait_ready()
            return await self._load_phase()
        finally:
            await self._close(tasks)

    async def _close(self, tasks: list[asyncio.Task[None]]) -> None:
        """RUN_DONE to every agent, their acks awaited briefly, then everything closed."""
        told = self.coord.accepted
        self.coord.broadcast(RunDone(self.run_id), told)
        if told and self._crashed is None:
            with contextlib.suppress(Exception):  # a channel that crashes now: still close
                await self._wait(lambda: all(a.done_acked or a.gone for a in told),
                                 RUN_DONE_WAIT, interruptible=False)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.coord.close(linger_ms=CLOSE_LINGER_MS)
        if self._local is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._local.stop)
        self.agg.close()
        if self._auth is not None:
            self._auth.stop()  # its ZAP socket too, or term() would wait for it
        self._ctx.term()

    async def _gather_agents(self) -> None:
        wanted = self.cfg.agents or 1
        timeout = self.cfg.agent_timeout

        def enough() -> bool:
            if self._local is not None and self._local.exitcode is not None:
                raise RunFailed(ExitCode.INTERNAL, f"the local agent exited with code "
                                                   f"{self._local.exitcode} before registering")
            return len(self.coord.accepted) >= wanted

        if not await self._wait(enough, timeout):
            if self.should_exit:
                raise self._interrupted("while waiting for agents")
            got = len(self.coord.accepted)
            names = ", ".join(a.name for a in self.coord.accepted) or "none"
            raise RunFailed(ExitCode.NOT_ENOUGH_AGENTS,
                            f"only {got} of {wanted} agent(s) registered within "
                            f"{timeout:g}s (agent_timeout); registered: {names}")
        self._agents = self.coord.accepted[:wanted]
        self.coord.run_planned = True

    async def _send_jobs(self) -> None:
        """Every agent's JOB, each checked against its agent's limit before any is sent.

        One encoding gives every size; then the jobs are encoded and sent one at a time
        (a big bundle is held once, not once per agent), off the loop, so heartbeats are
        answered meanwhile.
        """
        agents, cfg, bundle = self._agents, self.cfg, self.bundle
        total = self._total_workers = plan_workers(agents, cfg.worker)
        try:
            frames: list[bytes] | None = await asyncio.to_thread(
                job_frames, self.run_id, cfg, bundle, agents[0], total)
            assert frames is not None
            check_sizes(frames, agents, bundle)
        except JobTooLarge as e:
            raise RunFailed(ExitCode.USAGE, str(e)) from None
        for agent in agents:
            if frames is None:
                frames = await asyncio.to_thread(job_frames, self.run_id, cfg, bundle, agent,
                                                 total)
            for w in agent.worker_ids:
                self.agg.expect(agent.name, w)
            self.coord.send(agent, frames)
            frames = None
        log.info("run %s: %d user(s) over %d worker(s) on %d agent(s); stats on port %d",
                 self.run_id, cfg.users, total, len(agents), self.agg.port)

    def _not_ready(self) -> list[str]:
        """Who the run still waits for before START: READY from agents, HELLO from workers."""
        missing = [f"agent {a.name}: no READY" for a in self._agents
                   if a.state is not AgentState.READY]
        for a in self._agents:
            silent = [w for w in a.worker_ids if (a.name, w) not in self.agg.hellos]
            if silent:
                missing.append(f"agent {a.name}: worker(s) {', '.join(map(str, silent))} never "
                               f"reached the stats socket (port {self.agg.port})")
        return missing

    def _job_failure(self) -> RunFailed | None:
        coord = self.coord
        if coord.job_refusals:
            agent, refusal = coord.job_refusals[0]
            return RunFailed(ExitCode.USAGE, f"agent {agent} refused the job: {refusal.error}")
        if coord.job_failures:
            agent, failure = coord.job_failures[0]
            same = sum(f.error == failure.error for _, f in coord.job_failures)
            also = f"; the same on {same} workers" if same > 1 else ""
            sep = "\n" if "\n" in failure.error.strip() else " "
            return RunFailed(ExitCode.CLIENT_FAILED,
                             f"the client failed before load (agent {agent}, worker "
                             f"{failure.worker}{also}):{sep}{failure.error.rstrip()}")
        return None

    async def _wait_ready(self) -> None:
        def settled() -> bool:
            if self.coord.job_failures or self.coord.job_refusals \
                    or any(a.gone or a.lost_workers for a in self._agents):
                return True
            return not self._not_ready()

        # agent_timeout also bounds the workers' start: import and global_init
        await self._wait(settled, self.cfg.agent_timeout)
        problem: RunFailed | None = None
        if self.should_exit:
            problem = self._interrupted("before the load started")
        elif (failure := self._job_failure()) is not None:
            problem = failure
        elif any(a.gone or a.lost_workers for a in self._agents):
            lost = [f"agent {a.name} ({a.lost_reason})" for a in self._agents if a.gone]
            lost += [f"agent {a.name}, worker {w} ({why})" for a in self._agents
                     for w, why in a.lost_workers.items()]
            problem = RunFailed(ExitCode.AGENT_LOST, "lost before the load started: "
                                + "; ".join(lost))
        elif self._not_ready():
            problem = RunFailed(ExitCode.AGENT_LOST,
                                f"not ready within {self.cfg.agent_timeout:g}s (agent_timeout): "
                                + "; ".join(self._not_ready()))
        if problem is not None:
            self.coord.broadcast(Abort("the run cannot start"), self._live_agents)
            raise problem
        for agent in self._agents:
            for note in agent.notes:
                print(f"loadmaster: warning: {note}", file=sys.stderr)

    def _every_client_failing(self) -> str | None:
        """The error, once every live worker that runs clients said CLIENTS_FAILING."""
        errors = []
        for agent in self._live_agents:
            for w in agent.worker_ids:
                if clients_of(w, self._total_workers, self.cfg.users) == 0:
                    continue
                if w not in agent.failing:
                    return None
                errors.append(agent.failing[w])
        return errors[0] if errors else None

    async def _load_phase(self) -> int:
        cfg = self.cfg
        self._t0 = time.time() + START_DELAY
        self.agg.t0 = self._t0
        self.coord.broadcast(Start(t0=self._t0), self._agents)
        self._phase = "running"
        stop_at = self._t0 + cfg.run_time
        aborted = False
        deadline = stop_at + cfg.stop_grace + max(cfg.stop_grace, 1.0) + FINAL_MARGIN
        next_print = self._t0 + cfg.print_interval + LIVE_DELAY
        handled = (False, False)

        def stop(why: str, now: float) -> None:
            nonlocal deadline
            if self._stopping:
                return
            self.coord.broadcast(Stop(why), self._live_agents)
            self._stopping = f"{why}; calls in flight get up to {cfg.stop_grace:g}s " \
                             f"(stop_grace)"
            deadline = min(deadline, now + cfg.stop_grace + max(cfg.stop_grace, 1.0)
                           + FINAL_MARGIN)

        while not all(a.settled() for a in self._agents):
            self._check_channels()
            now = time.time()
            if (self.should_exit, self.force_exit) != handled:
                handled = (self.should_exit, self.force_exit)
                if self.force_exit:
                    self.coord.broadcast(Abort("interrupted twice"), self._live_agents)
                    aborted = True
                    self._stopping = "aborting: calls cancelled, waiting for totals"
                    deadline = min(deadline, now + ABORT_WAIT)
                else:
                    stop("interrupted" if self._signal is not None
                         else "stopped from the dashboard", now)
            if self._client_failure is None and \
                    (failing := self._every_client_failing()) is not None:
                self._client_failure = failing
                print(f"loadmaster: every client fails the same way before doing any I/O, "
                      f"so the run stops (exit 3): {failing}", file=sys.stderr, flush=True)
                stop("every client fails", now)
            if now >= stop_at:
                stop("run_time reached", now)
            if cfg.thresholds and not self._stopping and \
                    (failed := self._judge_live(now)) is not None:
                stop(f"threshold {failed.rule.shown()!r} failed (abort_on_fail): "
                     f"{failed.measured()}", now)
            if now >= next_print:
                self._print_live(now)
                next_print += cfg.print_interval * max(1, int((now - next_print)
                                                             / cfg.print_interval) + 1)
            if now >= deadline:
                break
            wake = min(next_print, deadline, stop_at if not self._stopping else deadline) - now
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.01, min(wake, 0.5)))
        incomplete = aborted or time.time() >= deadline
        if cfg.iterations and not self._stopping and not incomplete:
            self._printer.message(f"every worker made its share of the {cfg.iterations} "
                                  f"iterations: the run ended before run_time")
        if self.opts.outputs.wanted and not incomplete:
            await self._wait(self._series_complete, SERIES_WAIT, interruptible=False)
        return self._finish(incomplete)

    def _judge_live(self, now: float) -> Verdict | None:
        """Judge the rules once a second more is complete; the first failed one with
        abort_on_fail past its delay_abort, which stops the run."""
        covered = self._covered(max(0.0, now - self._t0))
        if covered <= self._judged:
            return None
        self._judged = covered
        self._live_verdicts = judge_live(self.cfg.thresholds, self.agg.totals,
                                         self.agg.series, covered)
        for v in self._live_verdicts:
            if v is not None and not v.passed and v.rule.abort_on_fail and \
                    covered >= v.rule.delay_abort:
                self._threshold_stop = v
                return v
        return None

    def _series_complete(self) -> bool:
        """Every final's calls are in the live series too (for the result file)."""
        for a in self._agents:
            for w, final in a.finals.items():
                live = self.agg.workers.get((a.name, w))
                if live is not None and not live.missed and \
                        (live.counts.ok, live.counts.fail) != (final.totals.ok, final.totals.fail):
                    return False
        return True

    def _finish(self, incomplete: bool) -> int:
        """Print the final block, built from the final totals; return the exit code."""
        view, code = final_report(self._agents, self.agg.workers, RunEnd(
            t0=self._t0, now=time.time(), users=self.cfg.users,
            total_workers=self._total_workers, incomplete=incomplete, signal=self._signal,
            stopped=self._dash_stop and self._signal is None,
            client_failure=self._client_failure, missed_deltas=self.agg.missed_deltas,
            implausible=self.agg.implausible, schedule=schedule_view(self.cfg),
            saturation=self.cfg.generator))
        if self.cfg.thresholds:
            view.thresholds = judge(self.cfg.thresholds, view.totals, view.run_time,
                                    self.agg.series)
            if self._threshold_stop is not None:
                v = self._threshold_stop
                view.notes.append(f"stopped early: threshold {v.rule.shown()!r} of "
                                  f"{v.rule.name or 'all names'} failed live "
                                  f"(abort_on_fail): {v.measured()}")
            if self._threshold_stop is not None or not all(v.passed for v in view.thresholds):
                code = first({code, ExitCode.THRESHOLD_FAILED})
        self._printer.final(format_final(view))
        self._view = view
        self._code = int(code)
        self._publish()
        return int(code)
