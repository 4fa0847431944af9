"""The final report: figures from final totals, lost and left agents, notes, exit codes."""

from __future__ import annotations

import signal

import pytest

from loadmaster.aggregator import WorkerLive
from loadmaster.console import format_final
from loadmaster.coordinator import AgentRecord, AgentState
from loadmaster.report import RunEnd, agent_state, final_report
from protocol.exitcodes import ExitCode
from protocol.stats import Totals
from protocol.wire.messages import Final, Register

T0 = 1_700_000_000.0
NAME = "HttpClient"


def totals(ok: int, fail: int = 0, error: str = "bad status 500") -> Totals:
    t = Totals()
    st = t.op(NAME)
    for i in range(ok):
        st.record_ok((1 + i % 10) * 1_000_000)
    if fail:
        st.fail = fail
        t.add_error((NAME, "ValueError", error), fail)
    return t


def final(worker: int, ok: int, *, fail: int = 0, last_end: float = 10.0, clients: int = 25,
          grace: float = 0.0, finished: int = 0, cancelled: int = 0) -> Final:
    return Final(worker=worker, totals=totals(ok, fail), last_end=last_end, clients=clients,
                 aborted=False, start_lag=0.001, stopped_at=10.0, grace=grace,
                 grace_finished=finished, grace_cancelled=cancelled)


def agent(name: str, order: int, workers: list[int], finals: list[Final]) -> AgentRecord:
    info = Register(name=name, hostname=f"{name}.example", cores=2, workers=len(workers),
                    version="1", pid=1000 + order, max_message=1 << 20, token="")
    return AgentRecord(identity=name.encode(), info=info, order=order, state=AgentState.READY,
                       worker_ids=workers, finals={f.worker: f for f in finals})


def end(*, users: int = 100, workers: int = 4, now: float = T0 + 12.0,
        sig: int | None = None, client_failure: str | None = None) -> RunEnd:
    return RunEnd(t0=T0, now=now, users=users, total_workers=workers, signal=sig,
                  client_failure=client_failure)


def two_agents() -> tuple[AgentRecord, AgentRecord]:
    a = agent("a", 0, [0, 1], [final(0, 100, last_end=10.0), final(1, 110, last_end=10.2)])
    b = agent("b", 1, [2, 3], [final(2, 120, fail=3, last_end=10.1),
                               final(3, 130, last_end=9.9)])
    return a, b


def lose(rec: AgentRecord, state: AgentState, at: float, reason: str) -> None:
    """The agent went away before its workers' final totals came in."""
    rec.state = state
    rec.lost_at = T0 + at
    rec.lost_reason = reason
    rec.finals.clear()


def live(rec: AgentRecord, ok: int, clients: int) -> dict[tuple[str, int], WorkerLive]:
    """Live totals of each of the agent's workers, up to their last delta."""
    return {(rec.name, w): WorkerLive(agent=rec.name, worker=w, counts=totals(ok),
                                      clients=clients) for w in rec.worker_ids}


# -- every worker sent its final totals ----------------------------------------------------


def test_all_finals_give_exact_totals_and_exit_0() -> None:
    a, b = two_agents()
    # live totals of workers that sent final ones must not be counted again
    view, code = final_report([a, b], live(a, 999, 999), end())
    assert code is ExitCode.OK
    assert view.totals.ok == 100 + 110 + 120 + 130 and view.totals.fail == 3
    assert view.run_time == 10.2  # the latest end of any worker, not now - T0
    assert view.users == 100 and view.users_planned == 100
    assert [(line.name, line.state, line.ok, line.fail, line.clients) for line in view.agents] \
        == [("a", "ok", 210, 0, 50), ("b", "ok", 250, 3, 50)]
    assert view.agents[0].rps == pytest.approx(210 / 10.2)
    assert view.notes == []
    assert not view.incomplete
    text = format_final(view)
    assert "users                         :100\n" in text
    assert "planned" not in text


def test_users_are_the_clients_that_started_beside_the_planned_ones() -> None:
    a = agent("a", 0, [0, 1], [final(0, 10, clients=50), final(1, 10, clients=47)])
    view, code = final_report([a], {}, end(users=100, workers=2))
    assert view.users == 97 and view.users_planned == 100
    assert "users                         :97 (planned 100)" in format_final(view)
    assert code is ExitCode.OK


def test_without_any_final_the_run_time_is_until_now() -> None:
    a = agent("a", 0, [0], [])
    view, _ = final_report([a], {}, end(workers=1, now=T0 + 7.5))
    assert view.run_time == 7.5


# -- agents and workers lost or gone -------------------------------------------------------


def test_a_lost_agent_is_named_counted_from_live_totals_and_exits_5() -> None:
    a, b = two_agents()
    lose(b, AgentState.LOST, 3.5, "no heartbeat for 3.0s")
    view, code = final_report([a, b], live(b, 40, 20), end())
    assert code is ExitCode.AGENT_LOST
    assert agent_state(b) == "LOST"
    assert [line.state for line in view.agents] == ["ok", "LOST"]
    assert view.agents[1].ok == 80  # two workers, 40 each, up to their last delta
    assert view.totals.ok == 100 + 110 + 80
    assert view.users == 25 + 25 + 20 + 20
    assert view.notes[0] == "agent b LOST at 3.5s into the run (no heartbeat for 3.0s)"
    assert sum("worker" in n and "agent b" in n and "last live delta" in n
               for n in view.notes) == 2
    text = format_final(view)
    assert any(line.split()[:1] == ["b"] and line.endswith("LOST")
               for line in text.splitlines())
    assert "agent b LOST at 3.5s into the run" in text


def test_a_lost_agent_without_live_totals_counts_nothing_but_is_still_reported() -> None:
    a, b = two_agents()
    lose(b, AgentState.LOST, 1.0, "unreachable")
    view, code = final_report([a, b], {}, end())
    assert code is ExitCode.AGENT_LOST
    assert view.agents[1].ok == 0 and view.agents[1].state == "LOST"
    assert view.totals.ok == 210
    assert "agent b LOST at 1.0s into the run (unreachable)" in view.notes


def test_an_agent_that_left_is_left_and_exits_5() -> None:
    a, b = two_agents()
    lose(b, AgentState.LEFT, 4.0, "agent stopped by SIGTERM")
    view, code = final_report([a, b], live(b, 10, 25), end())
    assert code is ExitCode.AGENT_LOST
    assert agent_state(b) == "left"
    assert [line.state for line in view.agents] == ["ok", "left"]
    assert view.notes[0] == "agent b left at 4.0s into the run (agent stopped by SIGTERM)"


def test_a_lost_worker_makes_its_agent_incomplete() -> None:
    a, b = two_agents()
    del b.finals[3]
    b.lost_workers[3] = "worker exited with code -9 (SIGKILL)"
    view, code = final_report([a, b], live(b, 50, 25), end())
    assert code is ExitCode.AGENT_LOST
    assert agent_state(b) == "incomplete"
    assert [line.state for line in view.agents] == ["ok", "incomplete"]
    assert view.agents[1].ok == 120 + 50  # worker 2's final, worker 3's live totals
    assert view.run_time == 10.2
    assert ("worker 3 of agent b: worker exited with code -9 (SIGKILL); counted up to its "
            "last live delta: its figures are an estimate, not exact") in view.notes
    assert view.incomplete  # the block says INCOMPLETE: never exact
    view.missed_deltas = 3
    text = format_final(view)
    assert "final benchmark: (INCOMPLETE)" in text
    assert "live deltas lost on the stats channel: 3\n" in text and "are exact" not in text


def test_a_worker_without_final_totals_at_the_deadline_is_noted() -> None:
    a, b = two_agents()
    del a.finals[1]
    view, code = final_report([a, b], live(a, 5, 25), end())
    assert code is ExitCode.AGENT_LOST
    assert view.agents[0].state == "incomplete"
    assert any("worker 1 of agent a" in n and "no final totals" in n for n in view.notes)


# -- signals and a failing client ----------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [
    (signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.TERMINATED)])
def test_a_signal_gives_128_plus_its_number(sig: int, code: ExitCode) -> None:
    view, got = final_report(list(two_agents()), {}, end(sig=sig))
    assert got is code and int(got) == 128 + sig
    assert view.totals.ok == 460  # the final block is still complete


@pytest.mark.parametrize(("sig", "code"), [
    (signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.TERMINATED)])
def test_a_signal_wins_over_a_lost_agent(sig: int, code: ExitCode) -> None:
    a, b = two_agents()
    lose(b, AgentState.LOST, 2.0, "no heartbeat for 3.0s")
    view, got = final_report([a, b], {}, end(sig=sig))
    assert got is code
    assert view.agents[1].state == "LOST"


def test_every_client_failing_stops_early_and_exits_3() -> None:
    why = "HttpInvalidUrl: bad URL 'notaurl' (every call so far raised it, before any I/O)"
    a, b = two_agents()
    view, code = final_report([a, b], {}, end(client_failure=why))
    assert code is ExitCode.CLIENT_FAILED
    notes = [n for n in view.notes if n.startswith("stopped early")]
    # the error itself is shown once, in the error table; the note says why the run is short
    assert len(notes) == 1 and "every client failed the same way before any I/O" in notes[0]
    assert why not in format_final(view)
    assert format_final(view).endswith(notes[0])


def test_a_failing_client_wins_over_a_signal_and_a_lost_agent() -> None:
    a, b = two_agents()
    lose(b, AgentState.LOST, 2.0, "unreachable")
    _, code = final_report([a, b], {}, end(sig=signal.SIGINT, client_failure="x: y"))
    assert code is ExitCode.CLIENT_FAILED


# -- the stop grace ------------------------------------------------------------------------


def test_grace_figures_are_summed_over_workers_and_the_longest_is_kept() -> None:
    a = agent("a", 0, [0, 1], [final(0, 10, grace=1.5, finished=3, cancelled=1),
                               final(1, 10, grace=2.0, finished=0, cancelled=2)])
    b = agent("b", 1, [2, 3], [final(2, 10, grace=0.5, finished=4, cancelled=0),
                               final(3, 10)])
    view, _ = final_report([a, b], {}, end())
    assert view.grace is not None
    assert (view.grace.seconds, view.grace.finished, view.grace.cancelled) == (2.0, 7, 3)
    assert ("stop grace: 2.000 s; calls in flight at the stop: "
            "7 finished, 3 cancelled") in format_final(view)


# -- the load generator: CPU, loop lag, saturation -----------------------------------------


def worker_live(name: str, w: int, cpu_seconds: float, span: int, lag: float,
                saturated_from: int = 0) -> WorkerLive:
    return WorkerLive(agent=name, worker=w, clients=25, cpu_seconds=cpu_seconds,
                      cpu_span=span, loop_lag=lag, saturated_from=saturated_from)


def generator(*records: WorkerLive) -> dict[tuple[str, int], WorkerLive]:
    return {(r.agent, r.worker): r for r in records}


def test_cpu_share_and_worst_lag_over_the_run_per_agent() -> None:
    a, b = two_agents()
    live_records = generator(worker_live("a", 0, 4.0, 10, 0.004),  # 40% of a core
                             worker_live("a", 1, 2.0, 10, 0.012),  # 20%
                             worker_live("b", 2, 9.0, 9, 0.001))  # 100%, over fewer seconds
    view, code = final_report([a, b], live_records, end())
    assert code is ExitCode.OK
    assert view.agents[0].cpu == pytest.approx(0.3) and view.agents[0].loop_lag == 0.012
    # worker 3 never sent a delta: agent b's share is worker 2's
    assert view.agents[1].cpu == pytest.approx(1.0) and view.agents[1].loop_lag == 0.001
    assert not any(line.saturated for line in view.agents)
    assert not any("saturated" in n for n in view.notes)
    assert view.totals.ok == 460  # live records of workers with final totals add nothing


def test_an_agent_without_deltas_has_no_cpu_figure() -> None:
    a, b = two_agents()
    view, _ = final_report([a, b], {}, end())
    assert [(line.cpu, line.loop_lag, line.saturated) for line in view.agents] \
        == [(None, None, False), (None, None, False)]


def test_a_saturated_worker_flags_its_agent_with_a_note_and_keeps_exit_0() -> None:
    a, b = two_agents()
    live_records = generator(worker_live("a", 0, 2.0, 10, 0.004),
                             worker_live("b", 2, 9.8, 10, 0.250, saturated_from=4),
                             worker_live("b", 3, 3.0, 10, 0.010))
    view, code = final_report([a, b], live_records, end())
    assert code is ExitCode.OK
    assert [line.saturated for line in view.agents] == [False, True]
    assert view.notes == [
        "note: agent b was saturated (over 90% of a core or loop lag over 20 ms for 3 s in "
        "a row: worker 2 from second 4): its figures measure the load generator as much as "
        "the target; add workers or agents"]
    text = format_final(view)
    assert text.endswith(view.notes[0])
    row = next(line for line in text.splitlines() if line.startswith("  b "))
    assert "SATURATED" in row.split() and "64.0" in row.split()  # (9.8 + 3.0) / 20


def test_the_note_names_a_few_saturated_workers_and_counts_the_rest() -> None:
    rec = agent("big", 0, list(range(8)), [final(w, 10) for w in range(8)])
    live_records = generator(*(worker_live("big", w, 9.5, 10, 0.03, saturated_from=w + 1)
                               for w in range(8)))
    view, code = final_report([rec], live_records, end(workers=8))
    assert code is ExitCode.OK
    (note,) = view.notes
    assert ("(over 90% of a core or loop lag over 20 ms for 3 s in a row: worker 0 from "
            "second 1, worker 1 from second 2, worker 2 from second 3, worker 3 from second "
            "4, worker 4 from second 5 and 3 more)") in note


def test_saturation_notes_come_before_an_early_stop_and_with_a_lost_agent() -> None:
    a, b = two_agents()
    lose(b, AgentState.LOST, 3.0, "no heartbeat for 3.0s")
    live_records = generator(worker_live("a", 0, 9.5, 10, 0.5, saturated_from=1),
                             worker_live("b", 2, 2.0, 2, 0.5, saturated_from=1))
    view, code = final_report([a, b], live_records, end(client_failure="x: y"))
    assert code is ExitCode.CLIENT_FAILED  # saturation changes no exit code
    saturated = [n for n in view.notes if "was saturated" in n]
    assert [n.split()[2] for n in saturated] == ["a", "b"]
    assert view.notes[-1].startswith("stopped early")
    assert view.agents[1].state == "LOST" and view.agents[1].saturated
