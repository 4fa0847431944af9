"""The open model on the live dashboard and on /metrics, with a real run: a target that
answers in 50 ms, a pool of two clients (about 38 calls a second) asked for 100 a second,
and a short max_schedule_lag. Most calls start late and many are dropped; the dashboard's
snapshots and the Prometheus figures must say so, as the final block does.

tests/test_dashboard_browser.py shows the same figures on the page itself.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e_helpers import (
    LineReader,
    Result,
    Target,
    free_port,
    kill_tagged,
    new_tag,
    started_master,
    wait_no_tagged,
    write_job,
)
from tests.test_dashboard import get_state, wait_state

RATE = 100  # calls a second asked for
RUN_TIME = 6
DELAY_MS = 50  # the target's answer time: two clients start at most ~38 calls a second
# the open model's keys: the pool too small for the rate on purpose
OPEN = {"arrival_rate": RATE, "run_time": RUN_TIME, "max_users": 2,
        "pre_allocated_users": 2, "max_schedule_lag": 0.5}
OPEN_SERIES = {"started", "late", "dropped", "service_p99_ms", "lag_p99_ms", "target"}


@dataclass
class Scrape:
    """One GET of /metrics: samples by (name, labels), and each family's HELP."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    help: dict[str, str]

    def value(self, metric: str, /, **labels: str) -> float:
        return self.samples[metric, frozenset(labels.items())]


def scrape(url: str) -> Scrape:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as r:
        text = r.read().decode()
    out = Scrape({}, {})
    for family in text_string_to_metric_families(text):
        out.help[family.name] = family.documentation
        for s in family.samples:
            out.samples[s.name, frozenset(s.labels.items())] = s.value
    return out


@dataclass
class OpenRun:
    result: Result
    live_state: dict[str, Any]  # a snapshot while running, with recent figures
    live_metrics: Scrape
    state: dict[str, Any]  # the snapshot once finished
    metrics: Scrape  # once finished

    def final_count(self, label: str) -> int:
        """A count of the final block: '234 (started over ...)' -> 234."""
        return int(self.result.final()[label].split()[0].replace(",", ""))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenRun]:
    """One run serving both the dashboard and /metrics, read while it runs and once its
    final block is printed (both kept 30 s, ended by SIGINT)."""
    tag = new_tag()
    folder = tmp_path_factory.mktemp("open-views")
    target = Target(tag, delay_ms=DELAY_MS)
    try:
        conf = write_job(folder, {"host": target.url, **OPEN})
        dash_at, port = f"127.0.0.1:{free_port()}", free_port()
        dash, metrics = f"http://{dash_at}/", f"http://127.0.0.1:{port}/metrics"
        with started_master(folder, conf, tag, "--dash-bind", dash_at, "--no-browser",
                            "--dash-keep", "30", "--metrics", str(port),
                            "--metrics-keep", "30") as proc:
            out, err = LineReader(proc.stdout), LineReader(proc.stderr)
            out.wait_for("dashboard: http", 30)
            live_state = wait_state(
                dash, lambda d: d["phase"] == "running" and d["open"]["recent"] is not None
                and d["covered"] >= 2, 40, "two seconds of the open model's figures")
            live_metrics = scrape(metrics)
            out.wait_for("the final figures stay on", RUN_TIME + 40)
            state, final_metrics = get_state(dash), scrape(metrics)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(30)
            result = Result(code, out.text(), err.text())
        yield OpenRun(result, live_state, live_metrics, state, final_metrics)
    finally:
        target.stop()
        leftover = wait_no_tagged(tag, timeout=15)
        kill_tagged(tag)
        assert not leftover, f"processes left running: {leftover}"


def test_the_run_is_the_open_model_and_falls_behind(run: OpenRun) -> None:
    assert run.result.code == 0, run.result.stderr  # Ctrl-C ended the keep, not the run
    final = run.result.final()
    assert final["arrival rate (target)"] == f"{RATE}/s (uniform)"
    # every call of the schedule is accounted for; most of them late, many dropped
    assert run.final_count("calls scheduled") == RATE * RUN_TIME
    assert run.final_count("late calls") > run.result.final_int("success count") // 2
    assert run.final_count("dropped calls") > 0


def test_metrics_late_and_dropped_equal_the_final_block(run: OpenRun) -> None:
    m, name = run.metrics, "HttpClient"
    assert m.value("loadtest_phase", phase="finished") == 1
    assert m.value("loadtest_arrival_rate_planned") == RATE
    assert m.value("loadtest_late_calls_total", name=name) == run.final_count("late calls")
    assert m.value("loadtest_dropped_calls_total", name=name) == \
        run.final_count("dropped calls")
    ok = run.result.final_int("success count")
    assert m.value("loadtest_calls_total", name=name, result="ok") == ok
    # the three histograms cover the same successes
    for metric in ("response_time", "service_time", "schedule_lag"):
        assert m.value(f"loadtest_{metric}_seconds_count", name=name) == ok, metric
        assert m.value(f"loadtest_{metric}_seconds_bucket", name=name, le="+Inf") == ok
    # the server answers in 50 ms: no service time under 50 ms, all of them under 250 ms;
    # from the intended start most calls take longer, since they waited for a client
    assert m.value("loadtest_service_time_seconds_bucket", name=name, le="0.025") == 0
    assert m.value("loadtest_service_time_seconds_bucket", name=name, le="0.25") == ok
    assert m.value("loadtest_response_time_seconds_bucket", name=name, le="0.25") < ok / 2
    assert m.value("loadtest_schedule_lag_seconds_bucket", name=name, le="0.01") < ok / 2
    # the corrected latency is the service time plus the lag, call by call
    assert m.value("loadtest_response_time_seconds_sum", name=name) == pytest.approx(
        m.value("loadtest_service_time_seconds_sum", name=name)
        + m.value("loadtest_schedule_lag_seconds_sum", name=name), rel=0.01)
    assert "intended start" in m.help["loadtest_response_time_seconds"]
    assert "actual start" in m.help["loadtest_service_time_seconds"]
    # while it ran, the counters were already there and growing
    live = run.live_metrics
    assert live.value("loadtest_phase", phase="running") == 1
    assert live.value("loadtest_arrival_rate_planned") == RATE
    assert 0 < live.value("loadtest_late_calls_total", name=name) <= \
        m.value("loadtest_late_calls_total", name=name)


def test_the_snapshot_has_the_schedule_and_what_it_got(run: OpenRun) -> None:
    live = run.live_state["open"]
    assert (live["target_rps"], live["arrivals"], live["rate_text"]) == \
        (RATE, "uniform", f"{RATE}/s")
    # the recent seconds: well under the target, late calls, service time about 50 ms and
    # the schedule lag above it
    recent = live["recent"]
    assert 0 < recent["started_rps"] < RATE * 0.6, recent
    assert recent["late"] > 0
    assert DELAY_MS <= recent["service_ms"]["p50"] < 3 * DELAY_MS
    assert recent["lag_ms"]["p99"] > 3 * DELAY_MS
    assert run.live_state["recent_ms"]["p99"] >= recent["lag_ms"]["p99"]

    state = run.state
    assert state["phase"] == "finished"
    done = state["open"]
    assert done["late"] == run.final_count("late calls")
    assert done["dropped"] == run.final_count("dropped calls")
    assert done["scheduled"] == run.final_count("calls scheduled") == RATE * RUN_TIME
    assert f"{done['started_rps']:.2f}" == run.result.final()["calls started/s"]
    assert done["late_after_ms"] == 10
    [name] = state["names"]
    assert (name["open"]["late"], name["open"]["dropped"]) == (done["late"], done["dropped"])
    assert name["open"]["service_p99_ms"] < name["p99_ms"]


def test_the_series_has_service_time_and_lag_beside_the_corrected_p99(run: OpenRun) -> None:
    series = run.state["series"]
    assert set(series) == {"t", "ok", "fail", "clients", "p50_ms", "p90_ms", "p99_ms",
                           *OPEN_SERIES}
    assert len({len(v) for v in series.values()}) == 1, series
    assert len(series["t"]) >= RUN_TIME - 1
    assert sum(series["late"]) > 0 and sum(series["dropped"]) > 0
    assert series["target"] == [RATE] * len(series["t"])  # no stages: the rate throughout
    assert series["started"] == [ok + fail for ok, fail in
                                 zip(series["ok"], series["fail"], strict=True)]
    charted = [(p99, service, lag) for p99, service, lag in
               zip(series["p99_ms"], series["service_p99_ms"], series["lag_p99_ms"],
                   strict=True) if p99 is not None]
    assert len(charted) >= RUN_TIME - 2, series
    for p99, service, lag in charted:
        # call by call the corrected latency is the service time plus the lag (>= 0)
        assert service <= p99 and lag <= p99, (p99, service, lag)
        assert DELAY_MS <= service < 3 * DELAY_MS
    assert json.dumps(series, allow_nan=False)  # what the page receives


def test_with_stages_the_target_follows_the_ramp(tmp_path: Path, tag: str) -> None:
    """Arrival-rate stages 0 -> 30/s over 3 s, held 3 s: the dashboard charts each
    second's target (not the largest throughout), /metrics plans the current target while
    the run goes and the stages' largest once it ended."""
    target = Target(tag)
    try:
        conf = write_job(tmp_path, {"host": target.url, "max_users": 20,
                                    "pre_allocated_users": 20,
                                    "stages": [{"duration": 3, "arrival_rate": 30},
                                               {"duration": 3, "arrival_rate": 30}]})
        dash_at, port = f"127.0.0.1:{free_port()}", free_port()
        dash, metrics = f"http://{dash_at}/", f"http://127.0.0.1:{port}/metrics"
        with started_master(tmp_path, conf, tag, "--dash-bind", dash_at, "--no-browser",
                            "--dash-keep", "30", "--metrics", str(port),
                            "--metrics-keep", "30") as proc:
            out = LineReader(proc.stdout)
            out.wait_for("dashboard: http", 30)
            live = wait_state(dash, lambda d: d["phase"] == "running" and d["covered"] >= 1,
                              40, "the first second")
            planned = scrape(metrics).value("loadtest_arrival_rate_planned")
            out.wait_for("the final figures stay on", 60)
            state, final = get_state(dash), scrape(metrics)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
    finally:
        target.stop()
    assert live["covered"] < 3 and live["open"]["target_rps"] < 30, live["open"]
    assert 0 < planned < 30
    assert state["series"]["target"][:6] == [10, 20, 30, 30, 30, 30]
    assert state["open"]["target_rps"] == 30
    assert final.value("loadtest_arrival_rate_planned") == 30
