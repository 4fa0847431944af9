"""The final report, built from what the run collected: a pure function, no I/O.

Inputs are the agents' records (their workers' final totals, lost workers, state), the
live records of every worker (live totals for those that never sent final ones; the
generator's CPU, loop lag and saturation for all), and how the run ended; the output is
the final block's view and the exit code. Nothing here sums live deltas of a worker that
sent its final totals, so the headline is exact whenever every worker reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loadmaster.aggregator import (
    MAX_NAMES,
    SATURATION,
    WorkerLive,
    generator_figures,
)
from loadmaster.config_values import GeneratorRule
from loadmaster.console import AgentLine, FinalView, GraceView, ScheduleView
from loadmaster.coordinator import AgentRecord, AgentState
from protocol.exitcodes import ExitCode, first, for_signal
from protocol.plan import clients_of
from protocol.stats import Totals

__all__ = ["RunEnd", "agent_state", "final_report"]
NAMED_WORKERS = 5  # saturated workers named in a note; the rest are counted


@dataclass(frozen=True)
class RunEnd:
    """How the run ended, as the run loop saw it."""

    t0: float  # wall clock of T0
    now: float  # wall clock when the report is built
    users: int  # planned clients
    total_workers: int
    incomplete: bool = False  # aborted, or final totals missing at the deadline
    signal: int | None = None  # the first SIGINT/SIGTERM that stopped the run
    stopped: bool = False  # the dashboard's Stop button stopped it (no signal)
    client_failure: str | None = None  # every client failed before any I/O
    missed_deltas: int = 0
    implausible: int = 0  # live deltas the aggregator dropped as impossible
    schedule: ScheduleView | None = None  # the open model's; None: the closed model
    saturation: GeneratorRule = SATURATION  # when a worker is saturated, and what then


def agent_state(agent: AgentRecord) -> str:
    """What the report calls an agent: ok, left, LOST, or incomplete (workers missing)."""
    if agent.state is AgentState.LEFT:
        return "left"
    if agent.state is AgentState.LOST:
        return "LOST"
    if any(w not in agent.finals for w in agent.worker_ids):
        return "incomplete"
    return "ok"


def _saturation_note(agent: str, workers: Sequence[WorkerLive], rule: GeneratorRule,
                     open_model: bool) -> str:
    """What the user should know of an agent whose saturated ``workers`` are given."""
    named = ", ".join(f"worker {w.worker} from second {w.saturated_from}"
                      + (f" ({', '.join(w.saturated_by)})" if w.saturated_by else "")
                      for w in workers[:NAMED_WORKERS])
    if len(workers) > NAMED_WORKERS:
        named += f" and {len(workers) - NAMED_WORKERS} more"
    behind = any("behind schedule" in w.saturated_by for w in workers)
    advice = "add workers or agents" + (
        ", or clients to the pool (max_users) if the calls are slow" if behind else "")
    return (f"note: agent {agent} was saturated ({rule.describe(open_model)}: {named}): "
            f"its figures measure the load generator as much as the target; {advice}"
            + (" (on_saturation: fail, exit 7)" if rule.fail else ""))


def _generator(line: AgentLine, workers: Sequence[WorkerLive]) -> list[WorkerLive]:
    """Set the agent's CPU share and worst loop lag over the run; its saturated workers."""
    line.cpu, line.loop_lag = generator_figures(workers)
    saturated = [w for w in workers if w.saturated_from]
    line.saturated = bool(saturated)
    return saturated


def final_report(agents: Sequence[AgentRecord], live: Mapping[tuple[str, int], WorkerLive],
                 end: RunEnd) -> tuple[FinalView, ExitCode]:
    total = Totals(dense=True)
    notes: list[str] = []
    lines: list[AgentLine] = []
    last_end = 0.0
    started = 0
    grace = GraceView(0.0, 0, 0)
    saturation: list[str] = []
    estimated = False  # a worker's figures come from its live deltas
    for agent in agents:
        agent_totals = Totals(dense=True)
        for w in agent.worker_ids:
            final = agent.finals.get(w)
            if final is not None:
                agent_totals.merge(final.totals)
                last_end = max(last_end, final.last_end)
                started += final.clients
                grace.seconds = max(grace.seconds, final.grace)
                grace.finished += final.grace_finished
                grace.cancelled += final.grace_cancelled
                continue
            worker = live.get((agent.name, w))
            if worker is not None:
                agent_totals.merge(worker.totals())  # up to its last live delta
                started += worker.clients
            why = agent.lost_workers.get(w) or (
                agent.lost_reason if agent.gone else "no final totals before the deadline")
            sched = " (its service times and schedule lags are not kept)" \
                if end.schedule is not None else ""
            notes.append(f"worker {w} of agent {agent.name}: {why}; counted up to its last "
                         f"live delta: its figures are an estimate, not exact{sched}")
            estimated = True
        state = agent_state(agent)
        if agent.gone:
            when = (agent.lost_at or end.now) - end.t0
            notes.insert(0, f"agent {agent.name} {state} at {when:.1f}s into the run "
                            f"({agent.lost_reason})")
        notes.extend(agent.notes)
        total.merge(agent_totals)
        combined = agent_totals.combined()
        line = AgentLine(
            name=agent.name, workers=len(agent.worker_ids),
            clients=sum(clients_of(w, end.total_workers, end.users) for w in agent.worker_ids),
            rps=0.0, ok=combined.ok, fail=combined.fail, state=state,
            clock_offset=agent.clock_offset,
            start_skew=max((f.start_lag for f in agent.finals.values()), default=0.0))
        lines.append(line)
        saturated = _generator(line, [rec for w in agent.worker_ids
                                      if (rec := live.get((agent.name, w))) is not None])
        if saturated:
            saturation.append(_saturation_note(agent.name, saturated, end.saturation,
                                               end.schedule is not None))
    run_time = last_end if last_end > 0 else max(0.0, end.now - end.t0)
    for line in lines:
        line.rps = line.ok / run_time if run_time else 0.0
    notes.extend(saturation)
    if end.implausible:
        notes.append(f"{end.implausible} live delta(s) dropped as implausible: a sequence "
                     f"number, call count, loop lag, CPU time or client count no worker "
                     f"could have sent, or operation names beyond {MAX_NAMES} in the run "
                     f"(the live figures and the series miss them; the totals above come "
                     f"from final totals)")
    if end.stopped:
        notes.append("stopped early from the dashboard (exit 130, as Ctrl-C)")
    if end.client_failure:
        notes.append("stopped early: every client failed the same way before any I/O (the "
                     "error is in the table above)")
    view = FinalView(
        run_time=run_time, users=started, users_planned=end.users, totals=total,
        agents=lines, missed_deltas=end.missed_deltas, notes=notes,
        incomplete=end.incomplete or estimated, grace=grace, schedule=end.schedule)
    codes = set()
    if end.client_failure:
        codes.add(ExitCode.CLIENT_FAILED)
    if end.signal is not None:
        codes.add(for_signal(end.signal))
    if end.stopped:
        codes.add(ExitCode.INTERRUPTED)
    if any(state != "ok" for state in (line.state for line in lines)):
        codes.add(ExitCode.AGENT_LOST)
    if saturation and end.saturation.fail:
        codes.add(ExitCode.SATURATED)
    return view, first(codes)
