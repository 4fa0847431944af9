"""Prometheus metrics of a run: ``loadmaster run --metrics HOST:PORT`` serves the Prometheus
text format on ``http://HOST:PORT/metrics`` while the run lasts, so that an existing
Prometheus and Grafana can watch it.

``MetricsServer`` is a small aiohttp app on the master's own event loop (no threads). At
each scrape it asks the run for a ``MetricsState`` (the figures as they are now) and
renders them with ``prometheus_client`` through a collector in a private registry:
nothing else of the process is exported. Every name starts with ``loadtest_``.

Per operation name: ``loadtest_calls_total{name,result}``, the histogram
``loadtest_response_time_seconds{name}`` (successful calls only, as the run's
histograms), ``loadtest_http_responses_total{name,code}``,
``loadtest_bytes_sent_total{name}``, ``loadtest_bytes_received_total{name}`` and
``loadtest_errors_total{name,type}`` (messages left out: their number is unbounded).
Per agent (label ``agent``): workers, clients, up, state, cpu_ratio, loop_lag_seconds,
saturated, calls_total. Of the run: users, users_planned, elapsed_seconds,
run_time_seconds, phase, missed_deltas_total, exit_code, run_info.

The open model (``arrival_rate``) times ``loadtest_response_time_seconds`` from each
call's intended start (the corrected latency) and adds, per name,
``loadtest_late_calls_total``, ``loadtest_dropped_calls_total`` and the histograms
``loadtest_service_time_seconds`` (from the actual start) and
``loadtest_schedule_lag_seconds`` (actual minus intended start), over the same
successes and in the same buckets; and of the run ``loadtest_arrival_rate_planned``
(calls a second). The run's histograms keep no sum of the service time or the lag: their
``_sum`` adds up the bucket midpoints (within 0.4% of the true sum).

A scrape never breaks the run: when building the figures raises, the scrape gets a 500
and the exception is logged (once for each distinct one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from loadmaster.console import AgentLine
from loadmaster.http_site import bind_site, new_runner
from protocol.histogram import (
    RELATIVE_ERROR,
    SUB_BUCKET_BITS,
    DenseHistogram,
    Histogram,
    bucket_index,
    bucket_value,
)
from protocol.stats import LATE_AFTER_NS, Totals
from protocol.wire.channel import host_port

__all__ = ["BUCKETS", "DEFAULT_PORT", "PHASES", "MetricsError", "MetricsServer", "MetricsState",
           "families", "midpoints"]

log = logging.getLogger("loadmaster")

DEFAULT_PORT = 9646  # --metrics with a host only
PREFIX = "loadtest_"
PHASES = ("waiting", "preparing", "running", "stopping", "finished")
# what an agent can be called: live (run.py: AgentState values) and final (report.py,
# which says "LOST"); the label is lower case so that both name one series
AGENT_STATES = ("ok", "incomplete", "left", "lost")
# the response time histogram's upper bounds, seconds (+Inf added)
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0)
_MAX_LOGGED = 20  # distinct scrape failures logged with their traceback


def _last_index_within(le_ns: int) -> int:
    """The highest bucket index whose reported value (its midpoint) is at most ``le_ns``."""
    i = bucket_index(le_ns)
    return i if bucket_value(i) <= le_ns else i - 1


_LE_LABELS = [repr(b) for b in BUCKETS]  # as Prometheus writes them: 0.005, 1.0, 10.0
_LE_INDEX = np.array([_last_index_within(round(b * 1e9)) for b in BUCKETS], np.int64)


class MetricsError(Exception):
    """The metrics endpoint cannot be served as asked (the address cannot be bound)."""


@dataclass
class MetricsState:
    """What the run knows now; the run builds one at each scrape."""

    run_id: str
    phase: str  # one of PHASES
    elapsed: float | None  # seconds since T0; None before the load
    run_time: float  # the planned run time, seconds
    users: int  # clients running now (once finished: clients that started)
    users_planned: int
    totals: Totals  # live totals during the run, the final block's once finished
    agents: Sequence[AgentLine]
    missed_deltas: int
    exit_code: int | None = None  # once finished
    arrival_rate: float | None = None  # the open model's target, calls a second; None: closed


# -- the figures -----------------------------------------------------------------------------


def _name(suffix: str) -> str:
    return PREFIX + suffix


def _buckets(hist: Histogram | DenseHistogram, total: int) -> list[tuple[str, float]]:
    """Cumulative bucket counts of a histogram of ``total`` successes: a bucket counts
    under ``le`` when its reported value is at most ``le``; +Inf is ``total``."""
    indexes, counts = hist.packed()
    if indexes.size:
        cum = np.concatenate((np.zeros(1, np.uint64), np.cumsum(counts, dtype=np.uint64)))
        under = cum[np.searchsorted(indexes, _LE_INDEX, side="right")].tolist()
    else:
        under = [0] * len(BUCKETS)
    # the histogram holds exactly the ok calls; the clamp keeps the buckets cumulative
    # should the two ever disagree
    out: list[tuple[str, float]] = [(le, float(min(n, total)))
                                    for le, n in zip(_LE_LABELS, under, strict=True)]
    out.append(("+Inf", float(total)))
    return out


def midpoints(indexes: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.int64]:
    """``bucket_value`` of each index, in one pass (a scrape may sum thousands)."""
    i = indexes.astype(np.int64)
    s = np.maximum((i >> SUB_BUCKET_BITS) - 1, 0)  # the low bits a bucket ignores
    low = (i - (s << SUB_BUCKET_BITS)) << s
    mid = low + ((np.int64(1) << s) - 1) // 2
    return np.where(i < 256, i, mid)


def _midpoint_sum(hist: Histogram | DenseHistogram) -> float:
    """The sum of a histogram's values, seconds, from its bucket midpoints."""
    indexes, counts = hist.packed()
    return float(np.dot(midpoints(indexes).astype(np.float64), counts.astype(np.float64))) / 1e9


def _operations(totals: Totals, open_model: bool) -> Iterator[Metric]:
    calls = CounterMetricFamily(_name("calls"), "Calls ended, by operation name and result "
                                "(failures include calls cancelled at the stop).",
                                labels=["name", "result"])
    times = HistogramMetricFamily(
        _name("response_time_seconds"),
        "Response time of the successful calls, by operation name; in the open model "
        "(arrival_rate) from each call's intended start, the corrected latency, which "
        "includes the schedule lag." if open_model else
        "Response time of the successful calls, by operation name.", labels=["name"])
    codes = CounterMetricFamily(_name("http_responses"), "HTTP responses by operation name "
                                "and status code (the built-in HTTP client).",
                                labels=["name", "code"])
    sent = CounterMetricFamily(_name("bytes_sent"), "Bytes of requests sent, by operation "
                               "name (the built-in HTTP client).", labels=["name"])
    received = CounterMetricFamily(_name("bytes_received"), "Bytes of responses received, "
                                   "by operation name (the built-in HTTP client).",
                                   labels=["name"])
    for name, st in sorted(totals.ops.items()):
        calls.add_metric([name, "ok"], st.ok)
        calls.add_metric([name, "fail"], st.fail)
        times.add_metric([name], _buckets(st.hist, st.ok), st.sum_ns / 1e9)
        for code, n in sorted(st.statuses.items()):
            codes.add_metric([name, str(code)], n)
        sent.add_metric([name], st.sent)
        received.add_metric([name], st.received)
    errors = CounterMetricFamily(_name("errors"), "Failed calls by operation name and "
                                 "exception type.", labels=["name", "type"])
    by_type: dict[tuple[str, str], int] = {}
    for (name, kind, _message), n in totals.iter_errors():
        by_type[name, kind] = by_type.get((name, kind), 0) + n
    for (name, kind), n in sorted(by_type.items()):
        errors.add_metric([name, kind], n)
    yield from (calls, times, codes, sent, received, errors)
    if open_model:
        yield from _schedule(totals)


def _schedule(totals: Totals) -> Iterator[Metric]:
    """The open model's figures per name: late and dropped calls, service time and
    schedule lag."""
    late = CounterMetricFamily(_name("late_calls"), f"Calls of the open model that started "
                               f"over {LATE_AFTER_NS / 1e9:g} s after their intended start "
                               f"(successes and failures), by operation name.",
                               labels=["name"])
    dropped = CounterMetricFamily(_name("dropped_calls"), "Calls of the open model that "
                                  "never started (not within max_schedule_lag of their "
                                  "intended start, or not by the stop), by operation name.",
                                  labels=["name"])
    summed = f"_sum from the bucket midpoints, within {RELATIVE_ERROR:.1%}"
    service = HistogramMetricFamily(
        _name("service_time_seconds"), f"Service time of the successful calls of the open "
        f"model, from their actual start (the response time is from the intended start), "
        f"by operation name ({summed}).", labels=["name"])
    lag = HistogramMetricFamily(
        _name("schedule_lag_seconds"), f"Schedule lag of the successful calls of the open "
        f"model: actual start minus intended start, by operation name ({summed}).",
        labels=["name"])
    for name, st in sorted(totals.ops.items()):
        late.add_metric([name], st.late)
        dropped.add_metric([name], st.dropped)
        sched = st.sched  # None: no call of the name ended, late or dropped yet
        ok = 0 if sched is None else st.ok
        for family, hist in ((service, Histogram() if sched is None else sched.service),
                             (lag, Histogram() if sched is None else sched.lag)):
            family.add_metric([name], _buckets(hist, ok), _midpoint_sum(hist))
    yield from (late, dropped, service, lag)


def _run(state: MetricsState) -> Iterator[Metric]:
    info = InfoMetricFamily(_name("run"), "The run.")
    info.add_metric([], {"run_id": state.run_id})
    yield info
    phase = GaugeMetricFamily(_name("phase"), "The run's phase: 1 for the current one.",
                              labels=["phase"])
    for p in (*PHASES, *(() if state.phase in PHASES else (state.phase,))):
        phase.add_metric([p], 1.0 if p == state.phase else 0.0)
    yield phase
    yield GaugeMetricFamily(_name("users"), "Clients running now (once finished: clients "
                            "that started).", value=state.users)
    yield GaugeMetricFamily(_name("users_planned"), "Clients the run asks for.",
                            value=state.users_planned)
    if state.arrival_rate is not None:
        yield GaugeMetricFamily(_name("arrival_rate_planned"), "The open model's target "
                                "arrival rate: calls a second the schedule starts "
                                "(arrival_rate / time_unit; with stages, their target now "
                                "during the run, their largest once it ended).",
                                value=state.arrival_rate)
    if state.elapsed is not None:
        yield GaugeMetricFamily(_name("elapsed_seconds"), "Seconds since the load started.",
                                value=state.elapsed)
    yield GaugeMetricFamily(_name("run_time_seconds"), "The planned run time.",
                            value=state.run_time)
    yield CounterMetricFamily(_name("missed_deltas"), "Per-second figures from workers that "
                              "never arrived.", value=state.missed_deltas)
    if state.exit_code is not None:
        yield GaugeMetricFamily(_name("exit_code"), "The master's exit code, once finished.",
                                value=state.exit_code)


def _agents(agents: Sequence[AgentLine]) -> Iterator[Metric]:
    def gauge(suffix: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(_name("agent_" + suffix), doc, labels=["agent"])

    workers = gauge("workers", "Worker processes of the agent.")
    clients = gauge("clients", "Clients running on the agent (once finished: planned).")
    up = gauge("up", "1 while the agent is in the run (state ok).")
    cpu = gauge("cpu_ratio", "CPU of the agent's workers, as a share of one core per worker.")
    lag = gauge("loop_lag_seconds", "The worst event loop lag of the agent's workers.")
    saturated = gauge("saturated", "1 when a worker of the agent is saturated: its latencies "
                      "measure the load generator.")
    state = GaugeMetricFamily(_name("agent_state"), "The agent's state: 1 for the current one.",
                              labels=["agent", "state"])
    calls = CounterMetricFamily(_name("agent_calls"), "Calls ended on the agent, by result.",
                                labels=["agent", "result"])
    for a in agents:
        name, now = a.name, a.state.lower()
        workers.add_metric([name], a.workers)
        clients.add_metric([name], a.clients)
        up.add_metric([name], 1.0 if now == "ok" else 0.0)
        for s in (*AGENT_STATES, *(() if now in AGENT_STATES else (now,))):
            state.add_metric([name, s], 1.0 if s == now else 0.0)
        if a.cpu is not None:
            cpu.add_metric([name], a.cpu)
        if a.loop_lag is not None:
            lag.add_metric([name], a.loop_lag)
        saturated.add_metric([name], 1.0 if a.saturated else 0.0)
        calls.add_metric([name, "ok"], a.ok)
        calls.add_metric([name, "fail"], a.fail)
    yield from (workers, clients, up, state, cpu, lag, saturated, calls)


def families(state: MetricsState) -> list[Metric]:
    """Every metric family of ``state``."""
    return [*_run(state), *_operations(state.totals, state.arrival_rate is not None),
            *_agents(state.agents)]


class _RunCollector(Collector):
    """Asks the run for its state at each collect."""

    def __init__(self, state: Callable[[], MetricsState]) -> None:
        self._state = state

    def describe(self) -> Iterable[Metric]:
        return []  # so that registering does not collect (it would ask the run)

    def collect(self) -> Iterable[Metric]:
        return families(self._state())


# -- the server ------------------------------------------------------------------------------


class MetricsServer:
    """``GET /metrics`` in the Prometheus text format, on the running event loop."""

    def __init__(self, host: str, port: int, state: Callable[[], MetricsState]) -> None:
        self.host = host
        self.port = port
        self.url = ""
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_RunCollector(state))
        self._runner: web.AppRunner | None = None
        self._logged: set[str] = set()  # scrape failures already logged

    async def start(self) -> str:
        """Bind and serve; the URL of the metrics. MetricsError when it cannot bind."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._index)
        self._runner = new_runner(app)
        await self._runner.setup()
        try:
            bound = await bind_site(self._runner, self.host, self.port)
        except OSError as e:
            await self.close()
            raise MetricsError(f"--metrics {host_port(self.host, self.port)}: "
                               f"{e.strerror or e}") from None
        self.url = f"http://{host_port(self.host, bound)}/metrics"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="loadtest metrics: /metrics\n")

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        try:
            body = generate_latest(self._registry)
        except Exception as e:
            # whatever went wrong is the run's figures' or ours, never the run's business
            key = f"{type(e).__name__}: {e}"[:300]
            if key not in self._logged and len(self._logged) < _MAX_LOGGED:
                self._logged.add(key)
                log.exception("metrics: a scrape failed")
            return web.Response(status=500, text=f"metrics unavailable: {type(e).__name__}\n")
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                "Cache-Control": "no-store"})
