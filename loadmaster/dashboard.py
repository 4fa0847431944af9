"""The live dashboard: one page, served from the master's own event loop, that shows the
whole cluster while it runs and the final figures after.

``Dashboard`` is the HTTP side (aiohttp): the page and its static files (the chart
library, uPlot, is vendored in ``dash/vendor``: no network at run time), ``/api/state``
(the latest snapshot, whole), ``/api/events`` (Server-Sent Events: a snapshot a
second, each with the seconds of the series that connection has not had yet) and
``/api/stop`` (a graceful stop, as the first Ctrl-C). ``Feed`` builds the snapshots
from the run's figures; building one costs about as much as a live block, once a
second, whatever the number of pages open (each page gets the same bytes but its part
of the series).

In the open model (``arrival_rate``) response times are from each call's intended start
(the corrected latency); a snapshot's ``open`` holds the schedule and what it got (calls
started, late, dropped, service time and schedule lag, over the whole run and over the
recent seconds), each name's ``open`` its late and dropped calls and p99s, and the series
has per second the calls started, late and dropped and the p99 of the service time and
of the schedule lag too. In the closed model each ``open`` is null and the series is as
it always was.

Who may press Stop: a browser on the master's machine (loopback peer), or anyone with
the token printed at start. Every request must name a host the dashboard is bound to
(``Host`` header: no DNS rebinding), and a stop must carry ``X-Dashboard: stop``, which a
cross-site form cannot send.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import os
import secrets
import sys
import webbrowser
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from loadmaster.aggregator import Aggregator
from loadmaster.config import Config, resolved_keys
from loadmaster.console import (
    AgentLine,
    FinalView,
    RecentOpen,
    ScheduleView,
    format_final,
    p50_p90_p99,
)
from loadmaster.coordinator import AgentRecord
from loadmaster.http_site import bind_site, new_runner
from loadmaster.masking import mask_text, masked
from loadmaster.result import plain
from loadmaster.thresholds import Verdict, shown_rows
from protocol.histogram import DenseHistogram, Histogram
from protocol.plan import stage_users
from protocol.stats import LATE_AFTER_NS, OpStats, Totals
from protocol.wire.channel import host_port, is_loopback

log = logging.getLogger("loadmaster")

DEFAULT_PORT = 8089
STATIC = Path(__file__).resolve().parent / "dash"
SNAPSHOT_VERSION = 1
ERROR_ROWS = 50  # the most frequent errors on the page
STOP_HEADER = "X-Dashboard"
TOKEN_HEADER = "X-Stop-Token"
_PHASES = ("waiting", "preparing", "running", "stopping", "finished")
_SERIES = ("t", "ok", "fail", "clients", "p50_ms", "p90_ms", "p99_ms")
# the open model's, per second: calls started (ended ok or failed), late, dropped, the
# p99 of the service time and of the schedule lag beside the corrected p99_ms, and the
# schedule's target rate (calls a second: with stages, their target at the second's end)
_OPEN_SERIES = ("started", "late", "dropped", "service_p99_ms", "lag_p99_ms", "target")


class DashboardError(Exception):
    """The dashboard cannot be served as asked (an explicit port that is busy)."""


def has_display() -> bool:
    """Whether a browser could open a window: always on macOS and Windows, else with X11
    or Wayland."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def _trio_ms(ps: Sequence[int | None]) -> dict[str, float | None]:
    return dict(zip(("p50", "p90", "p99"), map(_ms, ps), strict=True))


def _p99(hist: Histogram | DenseHistogram | None) -> float | None:
    return None if hist is None else _ms(hist.percentile(0.99))




@dataclass
class DashOptions:
    enabled: bool = False  # --dash, --dash-bind or enable_dash
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    explicit: bool = False  # --dash-bind given: a busy port is an error, not a fallback
    browser: bool = True  # open it (unless there is no display)
    keep: float | None = None  # --dash-keep: seconds to serve the final figures when
    # stdout is not a terminal (on a terminal: until Ctrl-C)


def schedule_view(cfg: Config) -> ScheduleView | None:
    """The open model's schedule as the console shows it; None in the closed model."""
    if cfg.arrival_rate is None:
        return None
    rate = cfg.arrival_rate
    if cfg.time_unit == 1.0:
        text = f"{rate:g}/s"
    else:
        text = f"{rate:g} per {cfg.time_unit:g} s ({rate / cfg.time_unit:.4g}/s)"
    if cfg.stages:  # (the rate is the stages' largest)
        text = f"stages, up to {text}"
    return ScheduleView(rate=rate / cfg.time_unit, arrivals=cfg.arrivals, text=text)


def schedule_at(cfg: Config, seconds: float) -> ScheduleView | None:
    """The open model's schedule, its rate the target ``seconds`` into the run: with
    stages, the stages' target then (not their largest); None in the closed model."""
    schedule = schedule_view(cfg)
    if schedule is None or not cfg.stages:
        return schedule
    stages = [(st.duration, float(st.target)) for st in cfg.stages]
    return replace(schedule, rate=stage_users(stages, seconds) / cfg.time_unit)


# -- snapshots -------------------------------------------------------------------------------


@dataclass
class Feed:
    """Builds the snapshots (the JSON the page reads) from the run's figures."""

    cfg: Config
    mask: tuple[str, ...]
    run_id: str
    config: dict[str, Any] = field(init=False)
    # the series as the page charts it: one entry a second, computed once when covered
    series: dict[str, list[Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.config = plain({**masked(resolved_keys(self.cfg), self.mask),
                             "custom": masked(self.cfg.custom, self.mask)})
        keys = _SERIES if self.cfg.arrival_rate is None else (*_SERIES, *_OPEN_SERIES)
        self.series = {key: [] for key in keys}

    def extend_series(self, agg: Aggregator, covered: int) -> None:
        """Add the seconds up to ``covered`` not charted yet."""
        s = self.series
        for second in range(len(s["t"]) + 1, covered + 1):
            merged = agg.series.merged(agg.series.window(second, second))
            s["t"].append(second)
            s["ok"].append(merged.ok)
            s["fail"].append(merged.fail)
            known = agg.series.seconds.get(second)
            s["clients"].append(0 if known is None else known.clients)
            for key, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
                s[key].append(_ms(merged.hist.percentile(q)))
            if "started" in s:
                s["started"].append(merged.ok + merged.fail)
                s["late"].append(merged.late)
                s["dropped"].append(merged.dropped)
                s["service_p99_ms"].append(_p99(merged.service))
                s["lag_p99_ms"].append(_p99(merged.lag))
                s["target"].append(schedule.rate if (schedule := schedule_at(
                    self.cfg, second)) is not None else None)

    def snapshot(self, *, phase: str, status: str, agg: Aggregator,
                 agents: Sequence[AgentRecord], lines: Sequence[AgentLine],
                 elapsed: float | None, covered: int, totals: Totals, users: int,
                 current_rps: float = 0.0, rate_window: int = 0,
                 recent: tuple[int | None, ...] = (None, None, None),
                 schedule: ScheduleView | None = None, recent_open: RecentOpen | None = None,
                 final: FinalView | None = None, exit_code: int | None = None,
                 verdicts: Sequence[Verdict | None] = ()) -> dict[str, Any]:
        """Everything but the series (the dashboard adds each page's part of it).
        ``schedule``: the open model's (None: the closed model), with ``recent_open`` its
        figures over the same seconds as ``recent``. ``verdicts``: of ``thresholds:``,
        judged live (None: no figure yet) or at the end; none yet: every rule waits."""
        assert phase in _PHASES
        run_time = float(self.cfg.run_time)
        combined = totals.combined()
        seconds = final.run_time if final is not None else float(covered)
        remaining = None if elapsed is None else max(0.0, run_time - elapsed)
        if final is not None:  # over: the run's time as the final block gives it, none left
            elapsed, remaining = final.run_time, 0.0
        by_name = {a.name: a for a in agents}
        doc: dict[str, Any] = {
            "v": SNAPSHOT_VERSION,
            "run_id": self.run_id,
            "phase": phase,
            "status": mask_text(status),
            "elapsed_s": None if elapsed is None else round(elapsed, 1),
            "run_time_s": run_time,
            "remaining_s": None if remaining is None else round(remaining, 1),
            "covered": covered,
            "users": users,
            "users_planned": self.cfg.users,
            "ok": combined.ok,
            "fail": combined.fail,
            "rps": combined.ok / seconds if seconds > 0 else 0.0,
            "current_rps": current_rps,
            "rate_window": rate_window,
            "recent_ms": _trio_ms(recent),
            "open": None if schedule is None else _open(schedule, combined, seconds,
                                                        recent_open),
            "names": [_name(st, seconds) for _, st in sorted(totals.ops.items())],
            "errors": [{"name": n, "type": t, "message": mask_text(m), "count": c}
                       for (n, t, m), c in list(totals.iter_errors())[:ERROR_ROWS]],
            "agents": [_agent(line, by_name.get(line.name)) for line in lines],
            "missed_deltas": agg.missed_deltas,
            "config": self.config,
            "thresholds": shown_rows(self.cfg.thresholds, list(verdicts)
                                     or [None] * len(self.cfg.thresholds)),
            "final": None,
        }
        if final is not None:
            doc["final"] = {"exit_code": exit_code, "incomplete": final.incomplete,
                            "notes": [mask_text(n) for n in final.notes],
                            "text": mask_text(format_final(final))}
        return doc


def _open(schedule: ScheduleView, total: OpStats, seconds: float,
          recent: RecentOpen | None) -> dict[str, Any]:
    """The open model's figures: the schedule, and what started over the whole run and
    the recent seconds (``recent``, None before a whole second is in)."""
    started = total.ok + total.fail
    sched = total.sched
    return {
        "target_rps": schedule.rate, "arrivals": schedule.arrivals, "rate_text": schedule.text,
        "scheduled": started + total.dropped, "started": started,
        "started_rps": started / seconds if seconds > 0 else 0.0,
        "late": total.late, "dropped": total.dropped, "late_after_ms": _ms(LATE_AFTER_NS),
        "service_ms": _trio_ms(p50_p90_p99(None if sched is None else sched.service)),
        "lag_ms": _trio_ms(p50_p90_p99(None if sched is None else sched.lag)),
        "recent": None if recent is None else {
            "started_rps": recent.started, "late": recent.late, "dropped": recent.dropped,
            "service_ms": _trio_ms(recent.service), "lag_ms": _trio_ms(recent.lag)},
    }


def _name(st: OpStats, seconds: float) -> dict[str, Any]:
    sched = st.sched
    return {
        "name": st.name, "ok": st.ok, "fail": st.fail,
        "rps": st.ok / seconds if seconds > 0 else 0.0,
        "avg_ms": _ms(st.mean_ns), "min_ms": _ms(st.min_value),
        "max_ms": _ms(st.max_ns if st.ok else None),
        "p50_ms": _ms(st.percentile(0.5)), "p90_ms": _ms(st.percentile(0.9)),
        "p99_ms": _ms(st.percentile(0.99)),
        "statuses": {str(code): n for code, n in sorted(st.statuses.items())},
        "bytes_sent": st.sent, "bytes_received": st.received,
        "open": None if sched is None else {
            "late": sched.late, "dropped": sched.dropped,
            "service_p99_ms": _p99(sched.service), "lag_p99_ms": _p99(sched.lag)},
    }


def _agent(line: AgentLine, record: AgentRecord | None) -> dict[str, Any]:
    return {
        "name": line.name,
        "host": None if record is None else record.info.hostname,
        "workers": line.workers, "clients": line.clients, "rps": line.rps,
        "cpu": line.cpu, "loop_lag_ms": None if line.loop_lag is None else line.loop_lag * 1e3,
        "clock_offset_ms": (line.clock_offset if record is None
                            else record.clock_offset) * 1e3,
        "state": line.state, "saturated": line.saturated,
    }


# -- the server ------------------------------------------------------------------------------


class Dashboard:
    def __init__(self, opts: DashOptions, on_stop: Callable[[], None]) -> None:
        self.opts = opts
        self.token = secrets.token_urlsafe(12)
        self.url = ""
        self._on_stop = on_stop
        self._doc: dict[str, Any] | None = None  # the latest snapshot, without its series
        self._body = b"{}"  # its JSON, without the leading brace
        self._series: Mapping[str, list[Any]] = {key: [] for key in _SERIES}
        self._changed = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._hosts: set[str] = set()  # Host header values that name us
        self._any_host = False  # bound to every address: any Host is ours

    # -- life ------------------------------------------------------------------------------
    async def start(self) -> str:
        """Bind and serve; the page's URL. DashboardError when an explicit port is busy."""
        app = web.Application(middlewares=[self._check_host])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{path:.+}", self._static)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        app.router.add_post("/api/stop", self._stop)
        self._runner = new_runner(app)
        await self._runner.setup()
        host, port = self.opts.host, self.opts.port
        try:
            bound = await bind_site(self._runner, host, port)
        except OSError as e:
            if self.opts.explicit or e.errno != errno.EADDRINUSE:
                await self._runner.cleanup()
                raise DashboardError(f"--dash-bind {host_port(host, port)}: "
                                     f"{e.strerror or e}") from None
            bound = await bind_site(self._runner, host, 0)  # the default port is busy: any free one
        shown = host_port(host)
        self.url = f"http://{host_port(host, bound)}/"
        names = {host, shown, "localhost", "127.0.0.1", "[::1]"} if is_loopback(host) \
            else {shown}
        self._hosts = {f"{n}:{bound}" for n in names}
        self._any_host = host in ("0.0.0.0", "::", "")
        return self.url

    def open_browser(self) -> bool:
        """Open the page in the user's browser when asked and possible; whether it did."""
        if not self.opts.browser or not has_display():
            return False
        try:
            return webbrowser.open(self.url, new=2)
        except webbrowser.Error:
            return False

    async def close(self) -> None:
        self._closing = True
        self._changed.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- what it serves --------------------------------------------------------------------
    def publish(self, doc: dict[str, Any], series: Mapping[str, list[Any]]) -> None:
        """A new snapshot (``Feed.snapshot``) and the series so far (only ever grows)."""
        self._doc = doc
        self._body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()[1:]
        self._series = series
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self._doc is not None and self._doc["phase"] == "finished"

    def _message(self, since: int) -> tuple[bytes, int]:
        """A snapshot with the seconds of the series after ``since``; the last second."""
        t = self._series["t"]
        part = {key: values[since:] for key, values in self._series.items()}
        series = json.dumps(part, separators=(",", ":"), allow_nan=False).encode()
        return b'{"series":' + series + b"," + self._body, len(t)

    @web.middleware
    async def _check_host(self, request: web.Request,
                          handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if not self._any_host and request.host not in self._hosts:
            return web.json_response({"error": f"unknown host {request.host[:100]!r}"},
                                     status=421)
        response: web.StreamResponse = await handler(request)
        return response

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html",
                                headers={"Cache-Control": "no-store"})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        path = (STATIC / request.match_info["path"]).resolve()
        if not path.is_relative_to(STATIC) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _state(self, request: web.Request) -> web.StreamResponse:
        body, _ = self._message(0)
        return web.Response(body=body, content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        sent = 0  # seconds of the series this page has
        try:
            while not self._closing:
                changed = self._changed
                if self._doc is not None:
                    body, sent = self._message(sent)
                    await response.write(b"event: state\ndata: " + body + b"\n\n")
                await changed.wait()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def _stop(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get(STOP_HEADER) != "stop":
            return web.json_response({"error": f"a stop needs the header {STOP_HEADER}: stop"},
                                     status=403)
        token = request.headers.get(TOKEN_HEADER, "")
        local = request.remote is not None and is_loopback(request.remote)
        if not local and not hmac.compare_digest(token.encode(), self.token.encode()):
            why = "wrong token" if token else "a stop from another machine needs the token " \
                                              "the master printed at start"
            return web.json_response({"error": why, "token_required": True}, status=403)
        if self.finished:
            return web.json_response({"error": "the run is over"}, status=409)
        log.info("dashboard: stop asked by %s", request.remote)
        self._on_stop()
        return web.json_response({"stopping": True})
