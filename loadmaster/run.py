"""One run, step by step (see ARCHITECTURE.md, "The run"): bind, agents, plan, job,
READY and HELLO from everyone, START, live blocks, STOP, final totals, report.

Ctrl-C: the first is a graceful STOP; the second an ABORT (at most ``ABORT_WAIT``
seconds more for totals, the final block marked incomplete). Either way exit 130.
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
from dataclasses import dataclass
from typing import TextIO

import zmq
import zmq.asyncio

from loadmaster.aggregator import Aggregator
from loadmaster.bundle import Bundle
from loadmaster.config import Config
from loadmaster.console import (
    AgentLine,
    BlockPrinter,
    FinalView,
    LiveView,
    format_final,
    format_live,
)
from loadmaster.coordinator import AgentRecord, AgentState, Coordinator
from loadmaster.local_agent import LocalAgent
from protocol.codec import encode
from protocol.messages import RUN_ID_LEN, Abort, Job, RunDone, Start, Stop
from protocol.plan import users_of
from protocol.stats import Totals

log = logging.getLogger("loadmaster")
START_DELAY = 0.5
ABORT_WAIT = 2.0
CLOSE_LINGER_MS = 1000
FINAL_MARGIN = 10.0  # beyond run_time + grace + shutdown, before missing totals count as lost


class ExitCode:
    OK = 0
    INTERNAL = 1
    USAGE = 2
    CLIENT_FAILED = 3
    NOT_ENOUGH_AGENTS = 4
    AGENT_LOST = 5
    INTERRUPTED = 130


@dataclass
class RunOptions:
    bind_host: str = "127.0.0.1"
    bind_port: int = 5556
    cpu_list: str = ""


class RunFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Run:
    def __init__(self, cfg: Config, bundle: Bundle, opts: RunOptions, out: TextIO) -> None:
        self.cfg = cfg
        self.bundle = bundle
        self.opts = opts
        self._printer = BlockPrinter(out)
        self.run_id = secrets.token_hex(RUN_ID_LEN // 2)
        self._changed = asyncio.Event()
        self._interrupts = 0
        self._ctx = zmq.asyncio.Context()
        embedded = cfg.agents == 0
        self._local: LocalAgent | None = None
        token: str | None = None
        if embedded:
            self._local = LocalAgent(cfg.worker, opts.cpu_list)
            token = self._local.token
        self.coord = Coordinator(self._ctx, opts.bind_host, 0 if embedded else opts.bind_port,
                                 wanted=cfg.agents or 1, token=token, on_change=self._changed.set)
        self.agg = Aggregator(self._ctx, opts.bind_host, self.run_id)
        self._agents: list[AgentRecord] = []
        self._total_workers = 0
        self._crashed: BaseException | None = None
        self._t0 = 0.0

    # -- helpers ------------------------------------------------------------------------

    def _on_sigint(self) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            print("\ninterrupted: stopping gracefully (Ctrl-C again to abort)",
                  file=sys.stderr, flush=True)
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
                    tick: float = 0.5) -> bool:
        """Wait until ``done()`` (True), ``timeout`` (False), or an interrupt (False)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        seen = self._interrupts
        while not done():
            self._check_channels()
            if self._interrupts != seen:
                return False
            remaining = tick if deadline is None else min(tick, deadline - loop.time())
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    @property
    def _live_agents(self) -> list[AgentRecord]:
        return [a for a in self._agents if not a.gone]

    # -- the run ------------------------------------------------------------------------
    async def execute(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        tasks: list[asyncio.Task[None]] = []
        try:
            try:
                endpoint = self.coord.bind()
                self.coord.stats_port = self.agg.bind()
            except zmq.ZMQError as e:
                raise RunFailed(ExitCode.USAGE, f"--bind {self.opts.bind_host}:"
                                                f"{self.opts.bind_port}: {e}") from None
            if self.opts.bind_host not in ("127.0.0.1", "::1", "localhost"):
                log.warning("control and stats channels on %s are unauthenticated: any host "
                            "that reaches them can join or read", self.opts.bind_host)
            tasks = [loop.create_task(self.coord.serve()), loop.create_task(self.agg.serve())]
            for task in tasks:
                task.add_done_callback(self._on_channel_done)
            if self._local is not None:
                self._local.start(endpoint)
            else:
                self._printer.message(f"waiting for {self.cfg.agents} agent(s) on {endpoint} "
                                      f"(up to {self.cfg.agent_timeout:g}s)")
            await self._gather_agents()
            await self._send_jobs()
            await self._wait_ready()
            return await self._load_phase()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.coord.broadcast(RunDone(self.run_id), self._live_agents)
            self.coord.close(linger_ms=CLOSE_LINGER_MS)  # RunDone and acks still leave
            if self._local is not None:
                await loop.run_in_executor(None, self._local.stop)
            self.agg.close()
            self._ctx.term()
            loop.remove_signal_handler(signal.SIGINT)  # only now: cleanup is not interrupted

    async def _gather_agents(self) -> None:
        wanted = self.cfg.agents or 1
        timeout = self.cfg.agent_timeout

        def enough() -> bool:
            if self._local is not None and self._local.exitcode is not None:
                raise RunFailed(ExitCode.INTERNAL, f"the local agent exited with code "
                                                   f"{self._local.exitcode} before registering")
            return len(self.coord.accepted) >= wanted

        if not await self._wait(enough, timeout):
            if self._interrupts:
                raise RunFailed(ExitCode.INTERRUPTED, "interrupted while waiting for agents")
            got = len(self.coord.accepted)
            names = ", ".join(a.name for a in self.coord.accepted) or "none"
            raise RunFailed(ExitCode.NOT_ENOUGH_AGENTS,
                            f"only {got} of {wanted} agent(s) registered within "
                            f"{timeout:g}s (agent_timeout); registered: {names}")
        self._agents = self.coord.accepted[:wanted]
        self.coord.run_planned = True

    def _plan(self) -> int:
        """Give every agent its global worker ids, in registration order."""
        next_id = 0
        for agent in self._agents:
            n = self.cfg.worker or agent.info.workers
            agent.worker_ids = list(range(next_id, next_id + n))
            next_id += n
        self._total_workers = next_id
        return next_id

    async def _send_jobs(self) -> None:
        total = self._plan()
        cfg = self.cfg
        jobs = []
        for agent in self._agents:
            frames = encode(Job(
                run_id=self.run_id, host=cfg.host, class_file=self.bundle.class_file,
                class_name=cfg.benchmark_class, custom_conf=cfg.custom, users=cfg.users,
                hatch_rate=cfg.hatch_rate, run_time=cfg.run_time, wait_time=cfg.wait_time,
                stop_grace=cfg.stop_grace, total_workers=total, worker_ids=agent.worker_ids,
                bundle=self.bundle.files))
            size = len(frames[1])
            if size > agent.info.max_message:
                raise RunFailed(ExitCode.USAGE,
                                f"the job with its bundle is {size} bytes, over agent "
                                f"{agent.name}'s limit of {agent.info.max_message} bytes: ship "
                                f"fewer files (files:) or raise loadagent --max-message")
            jobs.append((agent, frames))
        for agent, frames in jobs:
            for w in agent.worker_ids:
                self.agg.expect(agent.name, w)
            self.coord.send(agent, frames)
        log.info("run %s: %d user(s) over %d worker(s) on %d agent(s)", self.run_id,
                 cfg.users, total, len(self._agents))

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

    async def _wait_ready(self) -> None:
        def settled() -> bool:
            if self.coord.job_failures or any(a.gone or a.lost_workers for a in self._agents):
                return True
            return not self._not_ready()

        # agent_timeout also bounds the workers' start: import and global_init
        await self._wait(settled, self.cfg.agent_timeout)
        problem: RunFailed | None = None
        if self._interrupts:
            problem = RunFailed(ExitCode.INTERRUPTED, "interrupted before the load started")
        elif self.coord.job_failures:
            agent, failure = self.coord.job_failures[0]
            if failure.worker < 0:  # the agent refused the job itself
                problem = RunFailed(ExitCode.USAGE, f"agent {agent} refused the job: "
                                                    f"{failure.error}")
            else:
                problem = RunFailed(ExitCode.CLIENT_FAILED,
                                    f"the client failed before load (agent {agent}, worker "
                                    f"{failure.worker}):\n{failure.error}")
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

    async def _load_phase(self) -> int:
        cfg = self.cfg
        self._t0 = time.time() + START_DELAY
        self.coord.broadcast(Start(t0=self._t0), self._agents)
        stop_at = self._t0 + cfg.run_time
        stop_sent = aborted = False
        deadline = stop_at + cfg.stop_grace + max(cfg.stop_grace, 1.0) + FINAL_MARGIN
        next_print = self._t0 + cfg.print_interval
        handled = 0
        while not all(a.settled() for a in self._agents):
            self._check_channels()
            now = time.time()
            if self._interrupts != handled:
                handled = self._interrupts
                if handled == 1:
                    self.coord.broadcast(Stop("interrupted"), self._live_agents)
                    stop_sent = True
                    deadline = min(deadline, now + cfg.stop_grace + max(cfg.stop_grace, 1.0)
                                   + FINAL_MARGIN)
                else:
                    self.coord.broadcast(Abort("interrupted twice"), self._live_agents)
                    aborted = True
                    deadline = min(deadline, now + ABORT_WAIT)
            if not stop_sent and now >= stop_at:
                self.coord.broadcast(Stop("run_time reached"), self._live_agents)
                stop_sent = True
            if now >= next_print:
                self._printer.live(format_live(self._live_view(now)))
                next_print += cfg.print_interval * max(1, int((now - next_print)
                                                             / cfg.print_interval) + 1)
            if now >= deadline:
                break
            wake = min(next_print, deadline, stop_at if not stop_sent else deadline) - now
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.01, min(wake, 0.5)))
        return self._finish(incomplete=aborted or time.time() >= deadline)

    def _live_view(self, now: float) -> LiveView:
        elapsed = max(0.0, now - self._t0)
        lines = [AgentLine(name=a.name, workers=len(a.worker_ids),
                           clients=self.agg.clients(a.name),
                           rps=self.agg.current_rps(elapsed, a.name),
                           state="ok" if not a.gone else a.state.value)
                 for a in self._agents]
        return LiveView(run_time=elapsed, users=self.agg.clients(), totals=self.agg.totals,
                        current_rps=self.agg.current_rps(elapsed), agents=lines,
                        missed_deltas=self.agg.missed_deltas)

    def _finish(self, incomplete: bool) -> int:
        """Build and print the final block from the final totals; return the exit code."""
        total = Totals()
        lines: list[AgentLine] = []
        notes: list[str] = []
        run_time = 0.0
        problems = False
        for agent in self._agents:
            agent_totals = Totals()
            for w in agent.worker_ids:
                final = agent.finals.get(w)
                if final is not None:
                    agent_totals.merge(final.totals)
                    run_time = max(run_time, final.last_end)
                    continue
                problems = True
                live = self.agg.workers.get((agent.name, w))
                if live is not None:
                    agent_totals.merge(live.totals)  # up to its last live delta
                why = agent.lost_workers.get(w) or (
                    agent.lost_reason if agent.gone else "no final totals before the deadline")
                notes.append(f"worker {w} of agent {agent.name}: {why}; counted up to its last "
                             f"live delta")
            if agent.gone:
                problems = True
                when = (agent.lost_at or time.time()) - self._t0
                verb = "left" if agent.state is AgentState.LEFT else "LOST"
                notes.insert(0, f"agent {agent.name} {verb} at {when:.1f}s into the run "
                                f"({agent.lost_reason})")
            total.merge(agent_totals)
            combined = agent_totals.combined()
            state = "ok" if not agent.gone else (
                "left" if agent.state is AgentState.LEFT else "LOST")
            if state == "ok" and any(w not in agent.finals for w in agent.worker_ids):
                state = "incomplete"
            lines.append(AgentLine(
                name=agent.name, workers=len(agent.worker_ids),
                clients=sum(users_of(w, self._total_workers, self.cfg.users)
                            for w in agent.worker_ids),
                rps=combined.ok / run_time if run_time else 0.0,
                ok=combined.ok, fail=combined.fail, state=state, clock_offset=agent.clock_offset,
                start_skew=max((f.start_lag for f in agent.finals.values()), default=0.0)))
        if run_time == 0.0:
            run_time = max(0.0, time.time() - self._t0)
        for line in lines:
            line.rps = line.ok / run_time if run_time else 0.0
        self._printer.final(format_final(FinalView(
            run_time=run_time, users=self.cfg.users, totals=total, agents=lines,
            missed_deltas=self.agg.missed_deltas, notes=notes, incomplete=incomplete)))
        if self._interrupts:
            return ExitCode.INTERRUPTED
        return ExitCode.AGENT_LOST if problems else ExitCode.OK
