"""The live and final console blocks, in the seed's layout (``label<padding>:value``), and the
printer that shows them: redrawn in place with a progress line on a terminal, appended as
plain text elsewhere."""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from protocol.histogram import DenseHistogram, Histogram
from protocol.stats import LATE_AFTER_NS, OpStats, Totals
from protocol.wire.limits import format_size

if TYPE_CHECKING:
    from loadmaster.thresholds import Verdict

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
    # the open model: its schedule, and the same seconds' figures; None: the closed model
    schedule: ScheduleView | None = None
    recent_open: RecentOpen | None = None
    stage: str = ""  # with stages: the target now, and what was achieved
    thresholds: str = ""  # the rules judged live, in a line


@dataclass
class ScheduleView:
    """The open model's schedule, as configured."""

    rate: float  # calls per second over the whole run
    arrivals: str  # uniform, poisson
    text: str  # as the config says it: "500/s", "100 per 1m"


@dataclass
class RecentOpen:
    """The open model's figures over the complete seconds behind current rps."""

    started: float  # calls started per second (successes and failures)
    late: int
    dropped: int
    service: Trio  # p50, p90, p99, ns
    lag: Trio


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
    schedule: ScheduleView | None = None  # the open model's; None: the closed model
    thresholds: Sequence[Verdict] = ()  # the rules' verdicts (``thresholds:``)


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


def _trio(ps: Sequence[int | None]) -> str:
    return " / ".join(_ms(p) for p in ps)


Trio = tuple[int | None, int | None, int | None]


def p50_p90_p99(hist: Histogram | DenseHistogram | None) -> Trio:
    """p50, p90, p99 of a histogram, ns (None each: no histogram, or no success)."""
    if hist is None:
        return None, None, None
    return hist.percentile(0.5), hist.percentile(0.9), hist.percentile(0.99)


def _live_open(view: LiveView) -> list[str]:
    """The open model's live lines: the schedule against what started, late, dropped,
    and the service time and schedule lag beside the corrected percentiles above."""
    sched, recent = view.schedule, view.recent_open
    if sched is None:
        return []
    total = view.totals.combined()
    lines = [_field("arrival rate (target)", f"{sched.text} ({sched.arrivals})")]
    if recent is not None and view.rate_window:
        window = f"last {view.rate_window} s"
        lines += [
            _field(f"calls started/s ({window})", f"{recent.started:.2f}"),
            _field(f"late / dropped ({window})", f"{recent.late:,} / {recent.dropped:,}"),
            _field(f"service p50/p90/p99 ({window})", _trio(recent.service)),
            _field(f"lag p50/p90/p99 ({window})", _trio(recent.lag)),
        ]
    lines.append(_field("late / dropped (whole run)", f"{total.late:,} / {total.dropped:,}"))
    return lines


def _final_open(view: FinalView, total: OpStats) -> list[str]:
    """The open model's lines of the final block: what the schedule asked and got."""
    if view.schedule is None:
        return []
    sched = total.sched
    started = total.ok + total.fail
    service = p50_p90_p99(None if sched is None else sched.service)
    lag = p50_p90_p99(None if sched is None else sched.lag)
    return [
        _field("arrival rate (target)", f"{view.schedule.text} ({view.schedule.arrivals})"),
        _field("calls scheduled", f"{started + total.dropped:,}"),
        _field("calls started/s", f"{started / view.run_time:.2f}" if view.run_time else "-"),
        _field("late calls", f"{total.late:,} (started over {LATE_AFTER_NS // 10**6} ms after "
                             f"their intended start)"),
        _field("dropped calls", f"{total.dropped:,} (never started)"),
        _field("service time p50/p90/p99", _trio(service)),
        _field("schedule lag p50/p90/p99", _trio(lag)),
    ]


def _open_section(view: FinalView) -> list[str]:
    """Per name, when there are several: the three latencies, late and dropped."""
    if view.schedule is None or len(view.totals.ops) < 2:
        return []
    lines = ["open model (response time from the intended start; service time from the "
             "actual start):",
             f"  {'name':<24} {'late':>8} {'dropped':>8} {'p99':>10} {'service p99':>12} "
             f"{'lag p99':>10}"]
    for name, st in sorted(view.totals.ops.items()):
        if st.step:  # timed from its own start: a part of a call, not on the schedule
            continue
        sched = st.sched
        service = None if sched is None else sched.service.percentile(0.99)
        lag = None if sched is None else sched.lag.percentile(0.99)
        lines.append(f"  {name[:24]:<24} {st.late:>8} {st.dropped:>8} "
                     f"{_ms(st.percentile(0.99)):>10} {_ms(service):>12} {_ms(lag):>10}")
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
    if view.stage:
        lines.append(_field("stage target", view.stage))
    if view.thresholds:
        lines.append(_field("thresholds", view.thresholds))
    if view.rate_window and view.recent[0] is not None:
        p50, p90, p99 = (_ms(p) for p in view.recent)
        lines.append(_field(f"p50/p90/p99 (last {view.rate_window} s)",
                            f"{p50} / {p90} / {p99}"))
    lines += tail
    lines += _live_open(view)
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
    if view.schedule is not None and view.users_planned is not None:
        users = f"{view.users} (pool of at most {view.users_planned})"
    elif view.users_planned is not None and view.users_planned != view.users:
        users = f"{view.users} (planned {view.users_planned})"
    head, tail = _headline(view.run_time, users, total)
    title = "final benchmark:" + (" (INCOMPLETE)" if view.incomplete else "")
    lines = [RULE, title, *head, *tail,
             _field("95% response time", _ms(total.percentile(0.95))),
             _field("99% response time", _ms(total.percentile(0.99))),
             _field("99.9% response time", _ms(total.percentile(0.999))),
             *_final_open(view, total),
             RULE]
    if len(view.totals.ops) > 1:
        lines.append("operations:")
        lines.append(f"  {'name':<24} {'success':>10} {'fail':>8} {'avg':>10} {'p90':>10} "
                     f"{'p99':>10}")
        for name, st in sorted(view.totals.ops.items()):
            label = f"{name[:17]} (step)" if st.step else name[:24]
            lines.append(f"  {label:<24} {st.ok:>10} {st.fail:>8} {_ms(st.mean_ns):>10} "
                         f"{_ms(st.percentile(0.9)):>10} {_ms(st.percentile(0.99)):>10}")
    lines += _open_section(view)
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
        exact = "" if view.incomplete else \
            " (the totals above come from final totals and are exact)"
        lines.append(f"live deltas lost on the stats channel: {view.missed_deltas}{exact}")
    lines.extend(view.notes)
    lines += _thresholds_section(view.thresholds)
    return "\n".join(lines)


def _thresholds_section(verdicts: Sequence[Verdict]) -> list[str]:
    """The pass/fail table of ``thresholds:``; nothing without rules."""
    if not verdicts:
        return []
    failed = sum(not v.passed for v in verdicts)
    lines = [f"thresholds: {len(verdicts) - failed} passed, {failed} failed"
             + (" (exit 6)" if failed else ""),
             f"  {'':<6} {'rule':<32} {'name':<16} measured"]
    for v in verdicts:
        lines.append(f"  {'pass' if v.passed else 'FAIL':<6} {v.rule.shown()[:32]:<32} "
                     f"{(v.rule.name or 'all')[:16]:<16} {v.measured()}")
    return lines




# -- the progress line and the printer --------------------------------------------------------

BAR_MAX = 40  # cells of the progress bar at most
BAR_MIN = 10  # fewer cells than this beside the text: no bar
BAR_MIN_WIDTH = 60  # narrower terminals get the progress line without its bar


@dataclass
class Progress:
    """What the line under the live block says (on a terminal only)."""

    elapsed: float | None  # seconds since the load started; None before (agents, preparing)
    run_time: float  # the planned run time, seconds
    stopping: str = ""  # why and how the run stops, once it does
    url: str = ""  # the dashboard's URL, when there is one
    status: str = ""  # before the load: "waiting for 2 agent(s): 1 registered", ...


def _clock(seconds: float, scale: float) -> str:
    """Tenths of a second when the run is under a minute; m:ss, or h:mm:ss, beyond."""
    if scale < 60:
        return f"{seconds:.1f} s"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if scale >= 3600 else f"{60 * h + m}:{s:02d}"


def _planned(run_time: float) -> str:
    return f"{run_time:g} s" if run_time < 60 else _clock(run_time, run_time)


def _timed(p: Progress) -> bool:
    return p.elapsed is not None and p.run_time > 0 and math.isfinite(p.run_time)


def _progress_parts(p: Progress) -> list[tuple[str, str]]:
    """The progress line's pieces (text, rich style), its bar aside."""
    if p.elapsed is None:
        parts = [(p.status or "starting", "")]
    else:
        elapsed = max(0.0, p.elapsed)
        parts = [(f"{_clock(elapsed, p.run_time)} / {_planned(p.run_time)}" if _timed(p)
                  else f"{elapsed:.1f} s", "")]
        if p.stopping:
            parts.append((f"stopping: {p.stopping}", "yellow"))
    if p.url:
        parts.append((f"dashboard: {p.url}", ""))
    return parts


def format_progress(p: Progress) -> str:
    """The progress line's text, without its bar."""
    return "  ".join(text for text, _ in _progress_parts(p))


def _bar(done: float, cells: int, console: Console) -> Text:
    full = round(cells * min(1.0, max(0.0, done)))
    if not console.encoding.lower().startswith("utf"):
        on, off = "#", "-"
    elif console.no_color or console.color_system is None:
        on, off = "\u2501", "\u2500"  # heavy and light rules: told apart without colour
    else:
        on, off = "\u2501", "\u2501"  # told apart by the styles' colours, as rich's own bar
    style = "bar.finished" if full >= cells else "bar.complete"
    return Text.assemble((on * full, style), (off * (cells - full), "bar.back"))


def _progress_line(p: Progress, width: int, console: Console) -> Text:
    """The bar, when there is room beside the text, then the text; cut to ``width``."""
    parts = _progress_parts(p)
    # a long reason (stopping, status) is shortened first, so the times and URL stay
    over = len("  ".join(text for text, _ in parts)) - width
    free = 1 if p.elapsed is not None else 0  # the stopping reason, or the status
    if over > 0 and len(parts) > free and (p.stopping or p.elapsed is None):
        text, style = parts[free]
        keep = max(12, len(text) - over - 1)
        if keep < len(text):
            parts[free] = (text[:keep] + "\u2026", style)
    line = Text(no_wrap=True, overflow="ellipsis")
    text_len = len("  ".join(text for text, _ in parts))
    cells = min(BAR_MAX, width // 4, width - text_len - 2)
    if _timed(p) and width >= BAR_MIN_WIDTH and cells >= BAR_MIN:
        assert p.elapsed is not None
        line.append_text(_bar(p.elapsed / p.run_time, cells, console))
        line.append("  ")
    for i, (text, style) in enumerate(parts):
        line.append(("  " if i else "") + text, style)
    return line


class _LiveArea:
    """The live block and the progress line under it, as rich renders them each refresh.

    Every line is cropped to the terminal's width, and the block cut to its height (keeping
    room for the progress line), so the area is never taller than the screen: rich can then
    always move back to its top, and nothing is left behind when it is redrawn.
    """

    def __init__(self) -> None:
        self.block: str | None = None
        self.progress: Progress | None = None
        self.show_progress = True
        self.fit_height = True

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        progress = self.progress if self.show_progress else None
        lines = [] if self.block is None else self.block.split("\n")
        room = max(1, options.size.height - (progress is not None))
        if self.fit_height and len(lines) > room:
            hidden = len(lines) - room + 1
            lines = [*lines[:room - 1], f"... {hidden} more line(s): a taller terminal shows them"]
        for line in lines:
            # a Text, never markup: a name such as "[bold]" prints as it is
            yield Text(line, no_wrap=True, overflow="ellipsis")
        if progress is not None:
            yield _progress_line(progress, options.max_width, console)


class BlockPrinter:
    """Prints the live blocks, messages and the final block.

    On a terminal a rich Live redraws the latest live block in place with a progress line
    under it; messages print above that area, and the final block replaces it. When stdout
    is not a terminal (a file, a pipe, CI), or one that cannot move its cursor (TERM=dumb),
    every live block and message is appended as plain text, so logs keep the whole history.
    Quiet: only the final block, anywhere.
    """

    def __init__(self, out: TextIO, quiet: bool = False) -> None:
        self._out = out
        self._quiet = quiet
        try:
            self._tty = out.isatty()
        except (AttributeError, ValueError):
            self._tty = False
        self._console: Console | None = None
        if self._tty and not quiet:
            console = Console(file=out, force_terminal=True, force_jupyter=False,
                              highlight=False, markup=False, emoji=False)
            # TERM=dumb or TTY_INTERACTIVE=0: no cursor movement, so plain text as in a log
            self._console = console if console.is_interactive else None
        self._live: Live | None = None
        self._area = _LiveArea()
        self._finished = False  # the final block is out: progress updates no longer show
        self._handlers: list[tuple[logging.StreamHandler[TextIO], TextIO, TextIO]] = []

    @property
    def tty(self) -> bool:
        """Whether it writes to a terminal."""
        return self._tty

    def live(self, text: str) -> None:
        """Show a live block: in place of the previous one on a terminal, else appended."""
        if self._quiet:
            return
        if self._console is None:
            self._write(text)
            return
        self._area.block = text
        self._finished = False
        self._refresh()

    def progress(self, p: Progress) -> None:
        """Update the line under the live block (terminal only; a no-op otherwise or quiet)."""
        if self._console is None:
            return
        self._area.progress = p
        if not self._finished:
            self._refresh()

    def message(self, text: str) -> None:
        """A line (or lines) that stays: above the live area on a terminal."""
        if self._quiet:
            return
        if self._live is None or self._console is None:
            self._write(text)
            return
        self._fit(self._console)
        # soft wrap: the terminal folds a long line (a URL stays whole for copying)
        self._live.console.print(Text(text), soft_wrap=True)

    def final(self, text: str) -> None:
        """The final block: it replaces the live area on a terminal, and stays."""
        self._stop(keep_block=False)
        self._finished = True
        self._write(text)

    def close(self) -> None:
        """Stop the live area, leaving its last block on screen without the progress line,
        and show the cursor again. Idempotent; never raises an error of its own (it runs in
        finally blocks, where that would hide the error being handled)."""
        # the terminal may be gone (EIO, a broken pipe): then there is nothing to restore
        with contextlib.suppress(Exception):
            self._stop(keep_block=True)

    # -- internals ----------------------------------------------------------------------

    def _write(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def _fit(self, console: Console) -> None:
        """Take the size of the terminal we write to (rich would ask stdin, stdout, stderr)."""
        try:
            size = os.get_terminal_size(self._out.fileno())
        except (AttributeError, ValueError, OSError):
            return
        if size.columns > 0 and size.lines > 0:
            console.size = (size.columns, size.lines)

    def _refresh(self) -> None:
        assert self._console is not None
        self._fit(self._console)
        if self._live is None:
            self._start(self._console)
        assert self._live is not None
        self._live.refresh()

    def _start(self, console: Console) -> None:
        # no refresh thread: every redraw is ours; a stream that writes to this terminal
        # goes through the Live, which prints its lines above the live area
        out, err = sys.stdout, sys.stderr
        live = Live(self._area, console=console, auto_refresh=False, transient=True,
                    vertical_overflow="ellipsis",  # a safety net: _LiveArea fits the screen
                    redirect_stdout=self._same_terminal(out),
                    redirect_stderr=self._same_terminal(err))
        live.start()
        self._live = live
        atexit.register(self.close)  # the cursor comes back even if close() is forgotten
        proxies = {id(old): new for old, new in ((out, sys.stdout), (err, sys.stderr))
                   if new is not old}
        self._reroute_logging(proxies)

    def _stop(self, keep_block: bool) -> None:
        live, self._live = self._live, None
        if live is None:
            return
        atexit.unregister(self.close)
        area = self._area
        area.show_progress = False
        area.fit_height = False  # a block that stays is shown whole
        if not keep_block:
            area.block = None  # rendered as nothing, so nothing is left to erase
        live.transient = not keep_block
        try:
            live.stop()
        finally:
            self._restore_logging()
            area.show_progress = area.fit_height = True
            area.block = None

    def _same_terminal(self, stream: TextIO | None) -> bool:
        """Whether text written to ``stream`` lands where ``out`` writes."""
        if stream is None:
            return False
        if stream is self._out:
            return True
        try:
            if not stream.isatty():
                return False
            a, b = os.fstat(stream.fileno()), os.fstat(self._out.fileno())
        except (AttributeError, ValueError, OSError):
            return False
        return (a.st_dev, a.st_ino, a.st_rdev) == (b.st_dev, b.st_ino, b.st_rdev)

    def _reroute_logging(self, proxies: dict[int, TextIO]) -> None:
        """Log handlers that hold a stream the Live redirected write through its proxy too:
        logging.basicConfig kept the stream itself, and its lines would break the area."""
        if not proxies:
            return
        loggers: list[logging.Logger] = [logging.getLogger()]
        loggers += [x for x in logging.Logger.manager.loggerDict.values()
                    if isinstance(x, logging.Logger)]
        for logger in loggers:
            for h in logger.handlers:
                if isinstance(h, logging.StreamHandler) and id(h.stream) in proxies:
                    proxy = proxies[id(h.stream)]
                    self._handlers.append((h, h.stream, proxy))
                    h.setStream(proxy)

    def _restore_logging(self) -> None:
        handlers, self._handlers = self._handlers, []
        for h, original, proxy in handlers:
            if h.stream is proxy:
                h.setStream(original)
