"""The live and final console blocks, in the seed's layout (``label<padding>:value``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from protocol.stats import OpStats, Totals
from protocol.wire.limits import format_size

RULE = "=" * 40
LABEL_WIDTH = 30
ERROR_ROWS = 20  # the most frequent errors; the rest are summed in one line
HTTP_CODES_SHOWN = 6  # a name's status codes are listed when it has at most this many


@dataclass
class AgentLine:
    name: str
    workers: int
    clients: int
    rps: float  # current rps live; rps over the run in the final block
    ok: int = 0
    fail: int = 0
    state: str = "ok"
    clock_offset: float = 0.0  # seconds, master - agent
    start_skew: float = 0.0  # seconds the agent's latest worker started after T0
    # the load generator's health (live: over current rps's seconds; final: the run)
    cpu: float | None = None  # share of one core per worker; None: no delta yet
    loop_lag: float | None = None  # seconds, the worst of its workers
    saturated: bool = False  # a worker met the saturation rule (aggregator.py)


@dataclass
class LiveView:
    run_time: float  # seconds since T0 that the figures cover (complete seconds)
    users: int
    totals: Totals
    current_rps: float
    agents: Sequence[AgentLine] = ()
    missed_deltas: int = 0
    rate_window: int = 0  # complete seconds behind current rps
    stopping: str = ""  # why and how the run is stopping; empty while it runs
    behind: int = 0  # whole seconds the figures lag the clock (a busy or silent worker)
    # p50, p90, p99 (ns) over the same complete seconds as current_rps; None: no success
    recent: tuple[int | None, int | None, int | None] = (None, None, None)


@dataclass
class GraceView:
    """The stop grace: the calls in flight at the stop, apart from the run time."""

    seconds: float  # the longest grace of any worker
    finished: int  # calls in flight at the stop that ended by themselves
    cancelled: int  # cancelled when the grace ran out (or by an abort): failures


@dataclass
class FinalView:
    run_time: float
    users: int  # clients that started
    totals: Totals
    agents: Sequence[AgentLine] = ()
    missed_deltas: int = 0
    notes: list[str] = field(default_factory=list)
    incomplete: bool = False
    users_planned: int | None = None  # shown beside users when they differ
    grace: GraceView | None = None


def _field(label: str, value: object) -> str:
    return f"{label:<{LABEL_WIDTH}}:{value}"


def _ms(ns: float | None) -> str:
    if ns is None:
        return "-"
    ms = ns / 1e6
    return f"{ms:.3f} ms" if ms < 10 else f"{ms:.1f} ms"


def _cpu(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}"


def _lag(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def _http_responses(statuses: dict[int, int]) -> str:
    """Responses by status class, then the codes themselves when they are few."""
    if not statuses:
        return "none"
    classes: dict[int, int] = {}
    for code, n in statuses.items():
        classes[code // 100] = classes.get(code // 100, 0) + n
    text = "  ".join(f"{c}xx: {n:,}" for c, n in sorted(classes.items()))
    if len(statuses) <= HTTP_CODES_SHOWN:
        text += "  (" + "  ".join(f"{code}: {n:,}" for code, n in sorted(statuses.items())) + ")"
    return text


def _http_section(totals: Totals) -> list[str]:
    """The built-in HTTP client's figures per name; nothing when no name has any."""
    ops = [(name, st) for name, st in sorted(totals.ops.items())
           if st.statuses or st.sent or st.received]
    if not ops:
        return []
    lines = ["http:", f"  {'name':<24} {'sent':>10} {'received':>10}  responses"]
    for name, st in ops:
        sent, received = format_size(st.sent, ".1f"), format_size(st.received, ".1f")
        lines.append(f"  {name[:24]:<24} {sent:>10} {received:>10}  "
                     f"{_http_responses(st.statuses)}")
    return lines


def _headline(run_time: float, users: int | str,
              total: OpStats) -> tuple[list[str], list[str]]:
    """The seed's fields before and after where the live block puts current rps."""
    done = total.ok + total.fail
    accuracy = 100.0 * total.ok / done if done else 0.0
    rps = total.ok / run_time if run_time > 0 else 0.0
    return [
        _field("run time", f"{run_time:.3f}"),
        _field("users", users),
        _field("success count", total.ok),
        _field("fail count", total.fail),
        _field("rps", f"{rps:.2f}"),
    ], [
        _field("accuracy", f"{accuracy:.2f}%" if done else "-"),
        _field("average response time", _ms(total.mean_ns)),
        _field("min response time", _ms(total.min_value)),
        _field("max response time", _ms(total.max_ns if total.ok else None)),
        _field("90% response time", _ms(total.percentile(0.90))),
        _field("Median response time", _ms(total.percentile(0.50))),
    ]


def format_live(view: LiveView) -> str:
    total = view.totals.combined()
    head, tail = _headline(view.run_time, view.users, total)
    rate = (f"current rps (last {view.rate_window} s)" if view.rate_window
            else "current rps")
    lines = [RULE, *head, _field(rate, f"{view.current_rps:.2f}")]
    if view.rate_window and view.recent[0] is not None:
        p50, p90, p99 = (_ms(p) for p in view.recent)
        lines.append(_field(f"p50/p90/p99 (last {view.rate_window} s)",
                            f"{p50} / {p90} / {p99}"))
    lines += tail
    if view.stopping:
        lines.append(_field("stopping", view.stopping))
    if view.behind >= 2:
        lines.append(_field("figures late", f"{view.behind} s behind the clock: a worker is "
                                            f"busy, or its deltas are lost"))
    for a in view.agents:
        cpu = "-" if a.cpu is None else f"{_cpu(a.cpu)}%"
        lag = "-" if a.loop_lag is None else f"{_lag(a.loop_lag)} ms"
        saturated = ", SATURATED" if a.saturated else ""
        state = "" if a.state == "ok" else f" [{a.state}]"
        lines.append(_field(f"agent {a.name}", f"{a.workers} workers, {a.clients} clients, "
                                               f"{a.rps:.1f} rps, cpu {cpu}, loop lag {lag}"
                                               f"{saturated}{state}"))
    if view.missed_deltas:
        lines.append(_field("live deltas lost", view.missed_deltas))
    lines.append(RULE)
    return "\n".join(lines)


def format_final(view: FinalView) -> str:
    total = view.totals.combined()
    users: int | str = view.users
    if view.users_planned is not None and view.users_planned != view.users:
        users = f"{view.users} (planned {view.users_planned})"
    head, tail = _headline(view.run_time, users, total)
    title = "final benchmark:" + (" (INCOMPLETE)" if view.incomplete else "")
    lines = [RULE, title, *head, *tail,
             _field("95% response time", _ms(total.percentile(0.95))),
             _field("99% response time", _ms(total.percentile(0.99))),
             _field("99.9% response time", _ms(total.percentile(0.999))),
             RULE]
    if len(view.totals.ops) > 1:
        lines.append("operations:")
        lines.append(f"  {'name':<24} {'success':>10} {'fail':>8} {'avg':>10} {'p90':>10} "
                     f"{'p99':>10}")
        for name, st in sorted(view.totals.ops.items()):
            lines.append(f"  {name[:24]:<24} {st.ok:>10} {st.fail:>8} {_ms(st.mean_ns):>10} "
                         f"{_ms(st.percentile(0.9)):>10} {_ms(st.percentile(0.99)):>10}")
    lines += _http_section(view.totals)
    if view.grace is not None and (view.grace.finished or view.grace.cancelled):
        g = view.grace
        cancelled = (" (failures; a cancelled call does not extend the run time)"
                     if g.cancelled else "")
        lines.append(f"stop grace: {g.seconds:.3f} s; calls in flight at the stop: "
                     f"{g.finished} finished, {g.cancelled} cancelled{cancelled}")
    if view.totals.errors:
        lines.append("errors:")
        errors = list(view.totals.iter_errors())
        # columns as wide as their longest entry shown (at least 20, at most 40)
        nw = min(40, max(20, *(len(n) for (n, _, _), _ in errors[:ERROR_ROWS])))
        tw = min(40, max(20, *(len(t) for (_, t, _), _ in errors[:ERROR_ROWS])))
        lines.append(f"  {'count':>8}  {'name':<{nw}} {'type':<{tw}} message")
        for (name, etype, message), count in errors[:ERROR_ROWS]:
            lines.append(f"  {count:>8}  {name[:nw]:<{nw}} {etype[:tw]:<{tw}} {message}")
        rest = errors[ERROR_ROWS:]
        if rest:
            lines.append(f"  {sum(c for _, c in rest):>8}  ... {len(rest)} more distinct "
                         f"error(s)")
    if view.agents:
        lines.append("agents:")
        lines.append(f"  {'name':<24} {'workers':>7} {'clients':>8} {'success':>10} {'fail':>8} "
                     f"{'rps':>10} {'cpu %':>7} {'max lag ms':>11}  {'generator':<9} "
                     f"{'offset ms':>10} {'skew ms':>8}  state")
        for a in view.agents:
            generator = "SATURATED" if a.saturated else "ok"
            lines.append(f"  {a.name[:24]:<24} {a.workers:>7} {a.clients:>8} {a.ok:>10} "
                         f"{a.fail:>8} {a.rps:>10.1f} {_cpu(a.cpu):>7} {_lag(a.loop_lag):>11}  "
                         f"{generator:<9} {1000 * a.clock_offset:>10.1f} "
                         f"{1000 * a.start_skew:>8.1f}  {a.state}")
    if view.missed_deltas:
        lines.append(f"live deltas lost on the stats channel: {view.missed_deltas} "
                     f"(the totals above come from final totals and are exact)")
    lines.extend(view.notes)
    return "\n".join(lines)


class BlockPrinter:
    """Prints blocks; on a terminal each live block replaces the previous one in place.

    When stdout is not a terminal (a file, a pipe, CI) every block is appended as plain
    text, so logs keep the whole history.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        try:
            self._tty = out.isatty()
        except (AttributeError, ValueError):
            self._tty = False
        self._live_lines = 0

    @property
    def tty(self) -> bool:
        """Whether it writes to a terminal."""
        return self._tty

    def live(self, text: str) -> None:
        self._write(text, replace=True)

    def final(self, text: str) -> None:
        self._write(text, replace=False)

    def message(self, text: str) -> None:
        self._write(text, replace=False)

    def _write(self, text: str, replace: bool) -> None:
        if self._tty and self._live_lines:
            # up to the first line of the previous live block, then clear to the end
            self._out.write(f"\x1b[{self._live_lines}F\x1b[J")
        self._live_lines = text.count("\n") + 1 if (replace and self._tty) else 0
        self._out.write(text + "\n")
        self._out.flush()
