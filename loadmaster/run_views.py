"""What a run shows while it goes: the live block, the progress line on a terminal, the
live dashboard, Prometheus ``/metrics``, and the final figures kept served after the run.

``RunViews`` is a mixin of ``Run`` (loadmaster/run.py): its methods read the run's state,
declared below, and never change how the run goes, but for the dashboard's Stop button,
which asks for a graceful stop as the first Ctrl-C does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time

from loadmaster.aggregator import Aggregator
from loadmaster.config import Config
from loadmaster.console import (
    AgentLine,
    BlockPrinter,
    FinalView,
    LiveView,
    Progress,
    RecentOpen,
    format_live,
    p50_p90_p99,
)
from loadmaster.coordinator import AgentRecord, Coordinator
from loadmaster.dashboard import Dashboard, DashboardError, Feed, schedule_at, schedule_view
from loadmaster.metrics import MetricsError, MetricsServer, MetricsState
from loadmaster.run_options import RunFailed, RunOptions
from loadmaster.thresholds import Verdict
from protocol.exitcodes import ExitCode
from protocol.plan import stage_users
from protocol.wire.channel import is_loopback

__all__ = ["LIVE_DELAY", "RunViews"]

log = logging.getLogger("loadmaster")

# Live blocks are printed this long after a whole second of the run, when that second's
# deltas have arrived: the block then shows complete seconds only.
LIVE_DELAY = 0.3
PROGRESS_INTERVAL = 0.5  # seconds between updates of the progress line


def _live_thresholds(verdicts: list[Verdict | None]) -> str:
    """The rules judged live, in a line: how many pass and fail, the failing ones."""
    judged = [v for v in verdicts if v is not None]
    if not verdicts:
        return ""
    failing = [v for v in judged if not v.passed]
    text = f"{len(judged) - len(failing)} passing, {len(failing)} failing"
    if len(judged) < len(verdicts):
        text += f", {len(verdicts) - len(judged)} not judged yet"
    if failing:
        text += ": " + "; ".join(f"{v.rule.shown()} ({v.measured()})" for v in failing[:3])
    return text


class RunViews:
    # the run's state the views read, set by Run.__init__
    cfg: Config
    opts: RunOptions
    run_id: str
    agg: Aggregator
    coord: Coordinator
    should_exit: bool
    _changed: asyncio.Event
    _printer: BlockPrinter
    _agents: list[AgentRecord]
    _t0: float
    _view: FinalView | None
    _live_verdicts: list[Verdict | None]
    _code: int | None
    _stopping: str
    _phase: str
    _dash_stop: bool
    _signalled: asyncio.Event
    _dash: Dashboard | None
    _feed: Feed | None
    _metrics: MetricsServer | None

    @property
    def _live_agents(self) -> list[AgentRecord]:
        return [a for a in self._agents if not a.gone]

    def _on_dash_stop(self) -> None:
        """The dashboard's Stop: a graceful stop, as the first Ctrl-C."""
        if self.should_exit:
            return
        self._dash_stop = True
        print("\nstop asked from the dashboard: stopping gracefully (Ctrl-C to abort)",
              file=sys.stderr, flush=True)
        self.should_exit = True
        self._changed.set()


    def _covered(self, elapsed: float) -> int:
        """The last whole second every worker still running has reported."""
        running = [self.agg.workers[(a.name, w)].last_second for a in self._live_agents
                   for w in a.worker_ids if w not in a.finals and w not in a.lost_workers
                   and (a.name, w) in self.agg.workers]
        return min(min(running, default=self.agg.latest_second), int(elapsed))

    def _print_live(self, now: float) -> None:
        elapsed = max(0.0, now - self._t0)
        covered = self._covered(elapsed)
        if covered == 0:  # no whole second has arrived from every worker: nothing to show
            self._printer.live(f"waiting for the first second's figures from the workers "
                               f"({elapsed:.1f} s since the start)")
            return
        self._printer.live(format_live(self._live_view(elapsed, covered)))

    def _agent_lines(self, covered: int) -> list[AgentLine]:
        """Each agent's live figures: current rps, load and health over the complete
        seconds up to ``covered``; calls as its live deltas say."""
        lines = []
        for a in self._agents:
            cpu, lag = self.agg.generator_load(covered, a.name)
            workers = [live for w in a.worker_ids
                       if (live := self.agg.workers.get((a.name, w))) is not None]
            lines.append(AgentLine(name=a.name, workers=len(a.worker_ids),
                                   clients=self.agg.clients(a.name),
                                   rps=self.agg.current_rps(covered, a.name)[0],
                                   ok=sum(w.counts.ok for w in workers),
                                   fail=sum(w.counts.fail for w in workers),
                                   state="ok" if not a.gone else a.state.value,
                                   cpu=cpu, loop_lag=lag, saturated=self.agg.saturated(a.name)))
        return lines

    def _live_view(self, elapsed: float, covered: int) -> LiveView:
        # the figures cover the complete seconds whose deltas arrived
        lines = self._agent_lines(covered)
        rate, window = self.agg.current_rps(covered)
        merged = self.agg.recent(covered)
        recent = merged.hist
        schedule = schedule_view(self.cfg)
        recent_open = None
        if schedule is not None and window:
            recent_open = RecentOpen(
                started=(merged.ok + merged.fail) / window, late=merged.late,
                dropped=merged.dropped, service=p50_p90_p99(merged.service),
                lag=p50_p90_p99(merged.lag))
        users = self.agg.clients()
        return LiveView(run_time=float(covered), users=users,
                        stage=self._stage_line(covered, users, recent_open),
                        thresholds=_live_thresholds(self._live_verdicts),
                        schedule=schedule, recent_open=recent_open,
                        totals=self.agg.totals, current_rps=rate, rate_window=window,
                        agents=lines, missed_deltas=self.agg.missed_deltas,
                        stopping=self._stopping,
                        behind=0 if self._stopping else int(elapsed) - covered,
                        recent=p50_p90_p99(recent))


    def _stage_line(self, covered: int, users: int, recent: RecentOpen | None) -> str:
        """With stages: the target at the end of the last complete second, and what was
        achieved then (clients running; or calls started a second over the rate window)."""
        stages = [(s.duration, float(s.target)) for s in self.cfg.stages]
        if not stages:
            return ""
        target = stage_users(stages, float(covered))
        if self.cfg.arrival_rate is None:
            return f"{math.ceil(target - 1e-9)} users, {users} running"
        rate = target / self.cfg.time_unit
        started = "-" if recent is None else f"{recent.started:.1f}/s"
        return f"{rate:.1f} calls/s, {started} started"

    # -- the dashboard ------------------------------------------------------------------
    async def _start_dashboard(self) -> None:
        """Serve it before any agent is waited for: a busy explicit port is exit 2."""
        if self._dash is None:
            return
        try:
            url = await self._dash.start()
        except DashboardError as e:
            raise RunFailed(ExitCode.USAGE, str(e)) from None
        host = self.opts.dash.host
        self._printer.message(f"dashboard: {url} (its Stop button, from another machine, "
                              f"needs the token {self._dash.token})")
        if not is_loopback(host):
            log.warning("the dashboard listens on %s: anyone who reaches it sees the run "
                        "(Stop needs the token)", host)
        self._publish()
        if self._dash.open_browser():
            self._printer.message("dashboard: opened in your browser")

    async def _dash_loop(self) -> None:
        """A snapshot a second, just after each whole second of the run once it started.
        A failure of ours here is logged once and does not stop the run."""
        failed = False
        while True:
            try:
                self._publish()
            except Exception:
                if not failed:
                    log.exception("the dashboard could not be updated (the run goes on)")
                failed = True
            now = time.time()
            if self._t0 and now >= self._t0:
                wait = 1.0 - (now - self._t0 - LIVE_DELAY) % 1.0
            else:
                wait = 1.0
            await asyncio.sleep(wait)

    def _publish(self, status: str = "") -> None:
        """Give the dashboard the figures as they are now (no-op without one)."""
        if self._dash is None or self._feed is None:
            return
        elapsed = self._elapsed()
        covered = None if elapsed is None else self._covered(elapsed)
        view = self._view
        # (live: the target of the last second charted; at the end: the run's)
        schedule = schedule_at(self.cfg, covered or 0) if view is None else \
            schedule_view(self.cfg)
        if view is not None:
            self._feed.extend_series(self.agg, self.agg.latest_second)
            doc = self._feed.snapshot(
                phase="finished", status=status or f"finished, exit code {self._code}",
                agg=self.agg, agents=self._agents, lines=view.agents, elapsed=elapsed,
                covered=len(self._feed.series["t"]), totals=view.totals, users=view.users,
                schedule=schedule, final=view, exit_code=self._code, verdicts=view.thresholds)
        elif covered:
            assert elapsed is not None
            self._feed.extend_series(self.agg, covered)
            live = self._live_view(elapsed, covered)
            phase = "stopping" if self._stopping else "running"
            doc = self._feed.snapshot(
                phase=phase, status=status or self._stopping or "running", agg=self.agg,
                agents=self._agents, lines=live.agents, elapsed=elapsed, covered=covered,
                totals=self.agg.totals, users=live.users, current_rps=live.current_rps,
                rate_window=live.rate_window, recent=live.recent, schedule=schedule,
                recent_open=live.recent_open, verdicts=self._live_verdicts)
        else:
            phase = "finished" if status else self._phase
            doc = self._feed.snapshot(
                phase=phase, status=status or self._waiting_status(), agg=self.agg,
                agents=self._agents, lines=[], elapsed=elapsed, covered=0,
                totals=self.agg.totals, users=self.agg.clients(), schedule=schedule)
        self._dash.publish(doc, self._feed.series)

    def _waiting_status(self) -> str:
        if self._phase == "waiting":
            return f"waiting for {self.cfg.agents or 1} agent(s): " \
                   f"{len(self.coord.accepted)} registered"
        if self._phase == "running":
            return "started: waiting for the first second's figures"
        return "agents preparing: clients initialising"

    async def _keep_serving(self) -> None:
        """Serve the final figures a while: the dashboard on a terminal until Ctrl-C, else
        --dash-keep seconds; /metrics --metrics-keep seconds (a scraper's interval)."""
        keeps = []
        if self._dash is not None:
            dash_keep = self.opts.dash.keep
            if dash_keep is None and self._printer.tty and not self.opts.quiet:
                dash_keep = math.inf  # until Ctrl-C, which the user is told
            if dash_keep:
                keeps.append((dash_keep, f"the dashboard at {self._dash.url}"))
        if self._metrics is not None and self.opts.metrics_keep:
            keeps.append((self.opts.metrics_keep, f"/metrics at {self._metrics.url}"))
        if not keeps:
            return
        keep = max(k for k, _ in keeps)
        self._signalled.clear()
        until = "Ctrl-C" if keep == math.inf else f"{keep:g} s or Ctrl-C"
        self._printer.message(f"the final figures stay on {' and '.join(w for _, w in keeps)} "
                              f"until {until}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._signalled.wait(), None if keep == math.inf else keep)

    # -- the progress line (a terminal only) ---------------------------------------------
    async def _progress_loop(self) -> None:
        """The line under the live block, twice a second until the final block. A
        failure of ours here is logged once and only ends the line."""
        try:
            while self._view is None:
                elapsed = self._elapsed()
                status = "" if elapsed is not None else self._waiting_status()
                self._printer.progress(Progress(
                    elapsed=elapsed, run_time=self.cfg.run_time, stopping=self._stopping,
                    url=self._dash.url if self._dash is not None else "", status=status))
                await asyncio.sleep(PROGRESS_INTERVAL)
        except Exception:
            log.exception("the progress line could not be updated (the run goes on)")

    def _elapsed(self) -> float | None:
        """Seconds since T0; None before it."""
        now = time.time()
        return now - self._t0 if self._t0 and now >= self._t0 else None

    # -- /metrics -----------------------------------------------------------------------
    async def _start_metrics(self) -> None:
        """Serve /metrics before any agent is waited for: an address that cannot be bound
        is exit 2."""
        if self._metrics is None:
            return
        try:
            url = await self._metrics.start()
        except MetricsError as e:
            raise RunFailed(ExitCode.USAGE, str(e)) from None
        self._printer.message(f"metrics: {url}")
        if not is_loopback(self._metrics.host):
            log.warning("/metrics listens on %s: anyone who reaches it reads the run's figures",
                        self._metrics.host)

    def _metrics_state(self) -> MetricsState:
        """The figures as they are now, for a scrape: live totals (every delta received)
        during the run, the final block's once it is printed."""
        cfg, view = self.cfg, self._view
        elapsed = self._elapsed()
        schedule = schedule_at(cfg, elapsed or 0.0) if view is None else schedule_view(cfg)
        rate = None if schedule is None else schedule.rate
        if view is not None:
            return MetricsState(self.run_id, "finished", view.run_time, cfg.run_time,
                                view.users, cfg.users, view.totals, view.agents,
                                self.agg.missed_deltas, self._code, arrival_rate=rate)
        covered = 0 if elapsed is None else self._covered(elapsed)
        phase = "stopping" if self._stopping else self._phase
        return MetricsState(self.run_id, phase, elapsed, cfg.run_time, self.agg.clients(),
                            cfg.users, self.agg.totals, self._agent_lines(covered),
                            self.agg.missed_deltas, arrival_rate=rate)
