"""The Prometheus endpoint (loadmaster/metrics.py): a real server on loopback, real GETs,
the body parsed by prometheus_client's own parser and checked against the Totals, agents
and state it was given, in the closed model and the open one.

tests/test_open_model_views.py checks the open model's figures of a real run against its
final block."""

from __future__ import annotations

import errno
import logging
import random
import socket
from collections.abc import Callable

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadmaster.console import AgentLine
from loadmaster.metrics import (
    BUCKETS,
    PHASES,
    MetricsError,
    MetricsServer,
    MetricsState,
    families,
    midpoints,
)
from protocol.histogram import MAX_INDEX, bucket_index, bucket_value
from protocol.stats import LAG, SERVICE, Totals
from tests.state_helpers import in_loop

MS = 1_000_000  # ns

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def state(totals: Totals | None = None, **kw: object) -> MetricsState:
    base: dict[str, object] = dict(
        run_id="0123456789abcdef", phase="running", elapsed=12.5, run_time=60.0, users=7,
        users_planned=8, totals=totals if totals is not None else Totals(),
        agents=[AgentLine(name="a1", workers=2, clients=4, rps=10.0, ok=100, fail=2,
                          cpu=0.42, loop_lag=0.003),
                AgentLine(name="b2", workers=1, clients=3, rps=0.0, state="LOST",
                          saturated=True)],
        missed_deltas=3)
    base.update(kw)
    return MetricsState(**base)  # type: ignore[arg-type]


def figures(form: str = "sparse") -> Totals:
    """Two names: ``get`` with known latencies, HTTP figures and errors; ``post`` failures
    only (an empty histogram). ``form``: as a worker records, as the master accumulates,
    or as read off the wire."""
    t = Totals(dense=form == "dense")
    get = t.op("get /")
    for _ in range(1000):
        get.record_ok(3 * MS)
    for _ in range(10):
        get.record_ok(200 * MS)
    get.fail += 5
    get.statuses.update({200: 1010, 503: 4})
    get.sent, get.received = 12_345, 678_901
    t.add_error(("get /", "TimeoutError", "timed out after 1 s"), 3)
    t.add_error(("get /", "TimeoutError", "timed out after 2 s"), 1)
    t.add_error(("get /", "HTTPError", "503"), 1)
    post = t.op("post /x")
    post.fail += 2
    t.add_error(("post /x", "ValueError", "bad"), 2)
    return Totals.from_wire(t.to_wire()) if form == "wire" else t


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


def parse(body: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[metric, frozenset(labels.items())]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def scrape(st: Callable[[], MetricsState]) -> Samples:
    server = MetricsServer("127.0.0.1", 0, st)
    url = await server.start()
    try:
        status, ctype, body = await get(url)
    finally:
        await server.close()
    assert status == 200, body
    assert ctype.startswith("text/plain")
    return parse(body)


def buckets(samples: Samples, name: str,
            metric: str = "loadtest_response_time_seconds") -> list[tuple[float, float]]:
    """(le, count) of a name's histogram ``metric``, in le order."""
    out = [(float(dict(labels)["le"]), v)
           for labels, v in series(samples, metric + "_bucket").items()
           if dict(labels)["name"] == name]
    return sorted(out)


@pytest.mark.parametrize("form", ["sparse", "dense", "wire"])
@in_loop
async def test_counters_and_histogram_equal_the_totals(form: str) -> None:
    t = figures(form)
    s = await scrape(lambda: state(t))
    for name, st in t.ops.items():
        assert value(s, "loadtest_calls_total", name=name, result="ok") == st.ok
        assert value(s, "loadtest_calls_total", name=name, result="fail") == st.fail
        assert value(s, "loadtest_bytes_sent_total", name=name) == st.sent
        assert value(s, "loadtest_bytes_received_total", name=name) == st.received
        assert value(s, "loadtest_response_time_seconds_count", name=name) == st.ok
        assert value(s, "loadtest_response_time_seconds_sum", name=name) == \
            pytest.approx(st.sum_ns / 1e9)
        b = buckets(s, name)
        assert [le for le, _ in b] == [*BUCKETS, float("inf")]
        counts = [n for _, n in b]
        assert counts == sorted(counts), "cumulative"
        assert counts[-1] == st.ok
    assert series(s, "loadtest_http_responses_total") == {
        frozenset({("name", "get /"), ("code", "200")}): 1010,
        frozenset({("name", "get /"), ("code", "503")}): 4}
    # messages are left out: counts summed by (name, type)
    assert series(s, "loadtest_errors_total") == {
        frozenset({("name", "get /"), ("type", "TimeoutError")}): 4,
        frozenset({("name", "get /"), ("type", "HTTPError")}): 1,
        frozenset({("name", "post /x"), ("type", "ValueError")}): 2}


@in_loop
async def test_bucket_counts_for_known_latencies() -> None:
    s = await scrape(lambda: state(figures()))
    b = dict(buckets(s, "get /"))
    assert b[0.0025] == 0
    assert b[0.005] == 1000  # the 3 ms calls
    assert b[0.1] == 1000
    assert b[0.25] == 1010  # and the 200 ms ones
    assert b[float("inf")] == 1010
    assert all(n == 0 for n in dict(buckets(s, "post /x")).values())  # failures only


@in_loop
async def test_buckets_count_by_the_reported_value() -> None:
    """Random latencies around every bound: each counts under ``le`` when the value its
    bucket reports is at most ``le``."""
    rng = random.Random(16)
    bounds = [round(b * 1e9) for b in BUCKETS]
    values = [max(1, round(b * rng.uniform(0.97, 1.03))) for b in bounds for _ in range(50)]
    values += [rng.randrange(1, 20_000 * MS) for _ in range(500)]
    t = Totals(dense=True)
    for v in values:
        t.op("x").record_ok(v)
    s = await scrape(lambda: state(t))
    reported = [bucket_value(bucket_index(v)) for v in values]
    got = dict(buckets(s, "x"))
    for le, ns in zip(BUCKETS, bounds, strict=True):
        assert got[le] == sum(r <= ns for r in reported), le
    assert got[float("inf")] == len(values)


# -- the open model ------------------------------------------------------------------------

OPEN_FAMILIES = ("loadtest_late_calls_total", "loadtest_dropped_calls_total",
                 "loadtest_service_time_seconds_bucket", "loadtest_schedule_lag_seconds_bucket",
                 "loadtest_arrival_rate_planned")


def open_figures(form: str = "sparse") -> Totals:
    """The open model's figures: ``get /`` with 300 successes served in 3 ms each, a
    third started on time, a third 40 ms late and a third 400 ms late, and 4 failures;
    ``post /x`` only dropped calls (none started)."""
    t = Totals(dense=form == "dense")
    get = t.op("get /")
    for lag in (0, 40 * MS, 400 * MS):
        for _ in range(100):
            get.record_ok(3 * MS + lag)  # from the intended start
            get.histogram(SERVICE).record(3 * MS)
            get.histogram(LAG).record(lag)
    get.fail += 4
    get.schedule().late = 204  # the ones 40 and 400 ms late, and the failures
    get.schedule().dropped = 17
    t.op("post /x").schedule().dropped = 5
    return Totals.from_wire(t.to_wire()) if form == "wire" else t


@pytest.mark.parametrize("form", ["sparse", "dense", "wire"])
@in_loop
async def test_open_model_late_dropped_service_and_lag(form: str) -> None:
    s = await scrape(lambda: state(open_figures(form), arrival_rate=250.0))
    assert value(s, "loadtest_arrival_rate_planned") == 250
    assert series(s, "loadtest_late_calls_total") == {
        frozenset({("name", "get /")}): 204, frozenset({("name", "post /x")}): 0}
    assert series(s, "loadtest_dropped_calls_total") == {
        frozenset({("name", "get /")}): 17, frozenset({("name", "post /x")}): 5}
    for metric in ("response_time", "service_time", "schedule_lag"):
        full = f"loadtest_{metric}_seconds"
        assert value(s, full + "_count", name="get /") == 300, metric
        assert [le for le, _ in buckets(s, "get /", full)] == [*BUCKETS, float("inf")]
        counts = [n for _, n in buckets(s, "post /x", full)]
        assert counts == [0] * (len(BUCKETS) + 1), metric  # nothing started
        assert value(s, full + "_count", name="post /x") == 0
    service = dict(buckets(s, "get /", "loadtest_service_time_seconds"))
    assert (service[0.0025], service[0.005]) == (0, 300)  # every one 3 ms
    lag = dict(buckets(s, "get /", "loadtest_schedule_lag_seconds"))
    assert (lag[0.0005], lag[0.025], lag[0.05], lag[0.25], lag[0.5]) == \
        (100, 100, 200, 200, 300)
    corrected = dict(buckets(s, "get /"))  # the lag included
    assert (corrected[0.0025], corrected[0.005], corrected[0.05], corrected[0.5]) == \
        (0, 100, 200, 300)
    # the lag and service time keep no sum: their bucket midpoints give it
    assert value(s, "loadtest_service_time_seconds_sum", name="get /") == \
        pytest.approx(300 * 0.003, rel=1 / 256)
    assert value(s, "loadtest_schedule_lag_seconds_sum", name="get /") == \
        pytest.approx(100 * 0.04 + 100 * 0.4, rel=1 / 256)
    assert value(s, "loadtest_response_time_seconds_sum", name="get /") == \
        pytest.approx(300 * 0.003 + 100 * 0.04 + 100 * 0.4)


def test_open_model_help_says_where_each_latency_starts() -> None:
    docs = {f.name: f.documentation
            for f in families(state(open_figures(), arrival_rate=250.0))}
    assert "from each call's intended start" in docs["loadtest_response_time_seconds"]
    assert "the corrected latency" in docs["loadtest_response_time_seconds"]
    assert "from their actual start" in docs["loadtest_service_time_seconds"]
    assert "actual start minus intended start" in docs["loadtest_schedule_lag_seconds"]
    assert "0.01 s after their intended start" in docs["loadtest_late_calls"]
    assert "never started" in docs["loadtest_dropped_calls"]
    closed = {f.name: f.documentation for f in families(state(figures()))}
    assert "intended" not in closed["loadtest_response_time_seconds"]


@in_loop
async def test_the_closed_model_has_no_open_model_metrics() -> None:
    s = await scrape(lambda: state(figures()))
    for metric in OPEN_FAMILIES:
        assert not series(s, metric), metric
    # in the open model the target is there before any call ended
    s = await scrape(lambda: state(Totals(), arrival_rate=5.0))
    assert value(s, "loadtest_arrival_rate_planned") == 5


def test_midpoints_are_the_bucket_values() -> None:
    indexes = np.arange(MAX_INDEX + 1)
    assert midpoints(indexes).tolist() == [bucket_value(i) for i in range(MAX_INDEX + 1)]
    assert midpoints(indexes.astype(np.uint16)).tolist()[-3:] == \
        [bucket_value(i) for i in range(MAX_INDEX - 2, MAX_INDEX + 1)]


@in_loop
async def test_run_and_agent_gauges() -> None:
    s = await scrape(lambda: state(figures()))
    assert series(s, "loadtest_run_info") == {frozenset({("run_id", "0123456789abcdef")}): 1}
    assert {dict(k)["phase"]: v for k, v in series(s, "loadtest_phase").items()} == \
        {p: float(p == "running") for p in PHASES}
    assert value(s, "loadtest_users") == 7
    assert value(s, "loadtest_users_planned") == 8
    assert value(s, "loadtest_elapsed_seconds") == 12.5
    assert value(s, "loadtest_run_time_seconds") == 60
    assert value(s, "loadtest_missed_deltas_total") == 3
    assert not series(s, "loadtest_exit_code")  # not known yet
    for name, workers, clients, up in (("a1", 2, 4, 1), ("b2", 1, 3, 0)):
        assert value(s, "loadtest_agent_workers", agent=name) == workers
        assert value(s, "loadtest_agent_clients", agent=name) == clients
        assert value(s, "loadtest_agent_up", agent=name) == up
    assert value(s, "loadtest_agent_cpu_ratio", agent="a1") == 0.42
    assert value(s, "loadtest_agent_loop_lag_seconds", agent="a1") == 0.003
    assert set(series(s, "loadtest_agent_cpu_ratio")) == {frozenset({("agent", "a1")})}
    assert set(series(s, "loadtest_agent_loop_lag_seconds")) == {frozenset({("agent", "a1")})}
    assert value(s, "loadtest_agent_saturated", agent="a1") == 0
    assert value(s, "loadtest_agent_saturated", agent="b2") == 1
    assert value(s, "loadtest_agent_calls_total", agent="a1", result="ok") == 100
    assert value(s, "loadtest_agent_calls_total", agent="a1", result="fail") == 2
    states = {dict(k)["state"]: v for k, v in series(s, "loadtest_agent_state").items()
              if dict(k)["agent"] == "b2"}
    assert states == {"ok": 0, "incomplete": 0, "left": 0, "lost": 1}  # "LOST" lower-cased


@in_loop
async def test_before_the_load_and_once_finished() -> None:
    s = await scrape(lambda: state(phase="preparing", elapsed=None, agents=[]))
    assert value(s, "loadtest_phase", phase="preparing") == 1
    assert not series(s, "loadtest_elapsed_seconds")
    assert not series(s, "loadtest_agent_up")
    s = await scrape(lambda: state(figures(), phase="finished", exit_code=2,
                                   agents=[AgentLine("a1", 2, 4, 0.0, state="incomplete")]))
    assert value(s, "loadtest_phase", phase="finished") == 1
    assert sum(series(s, "loadtest_phase").values()) == 1
    assert value(s, "loadtest_exit_code") == 2
    assert value(s, "loadtest_agent_state", agent="a1", state="incomplete") == 1
    assert value(s, "loadtest_agent_up", agent="a1") == 0


@in_loop
async def test_paths_other_than_metrics() -> None:
    server = MetricsServer("127.0.0.1", 0, lambda: state())
    url = await server.start()
    assert url == server.url and url.startswith("http://127.0.0.1:") and \
        url.endswith("/metrics")
    base = url.removesuffix("metrics")
    try:
        status, _, body = await get(base)
        assert status == 200 and "/metrics" in body
        for path in ("metrics/", "api/state", "favicon.ico", "metricsx"):
            status, _, _ = await get(base + path)
            assert status == 404, path
        async with aiohttp.ClientSession() as sess, sess.post(url) as r:
            assert r.status == 405
    finally:
        await server.close()


@in_loop
async def test_a_failing_scrape_answers_500_and_the_next_one_works(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def flaky() -> MetricsState:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("the run's figures are broken")
        if calls == 3:  # a state the families cannot be built from
            return state(agents=[None])
        return state(figures())

    server = MetricsServer("127.0.0.1", 0, flaky)
    url = await server.start()
    try:
        with caplog.at_level(logging.ERROR, logger="loadmaster"):
            for _ in range(3):
                status, _, body = await get(url)
                assert status == 500
                assert "metrics unavailable" in body and len(body) < 200
            status, _, body = await get(url)
        assert status == 200
        assert value(parse(body), "loadtest_calls_total", name="get /", result="ok") == 1010
    finally:
        await server.close()
    failures = [r for r in caplog.records if r.name == "loadmaster"]
    # the same exception twice is logged once; a different one is logged too
    assert len(failures) == 2
    assert all(r.exc_info for r in failures)
    assert "the run's figures are broken" in caplog.text


@in_loop
async def test_a_busy_port_is_an_error_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer("127.0.0.1", port, lambda: state())
        with pytest.raises(MetricsError) as e:
            await server.start()
        assert f"--metrics 127.0.0.1:{port}" in str(e.value)
        assert "in use" in str(e.value)
        await server.close()  # harmless after a failed start


@in_loop
async def test_close_frees_the_port() -> None:
    server = MetricsServer("127.0.0.1", 0, lambda: state())
    url = await server.start()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert (await get(url))[0] == 200
    await server.close()
    await server.close()  # twice is harmless
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
    again = MetricsServer("127.0.0.1", port, lambda: state(phase="finished"))
    assert await again.start() == url
    try:
        s = parse((await get(url))[2])
        assert value(s, "loadtest_phase", phase="finished") == 1
    finally:
        await again.close()


def test_ipv6_url_has_brackets() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    @in_loop
    async def run() -> None:
        server = MetricsServer("::1", 0, lambda: state())
        try:
            url = await server.start()
        except MetricsError as e:
            pytest.skip(f"no IPv6 loopback: {e}")
        try:
            assert url.startswith("http://[::1]:")
            assert (await get(url))[0] == 200
        finally:
            await server.close()

    run()

