"""The open model end to end: real master, agents, workers and HTTP targets on loopback.

- The achieved rate over 10 s is the configured one (within 2%), split exactly over two
  agents of two workers each, and the target sees the arrivals interleaved, not in
  bursts of one per worker.
- A target that freezes for a second, with a small pool: the corrected p99 shows the
  stall, the service time does not, the schedule lag explains the difference, the late
  calls are counted; with a short max_schedule_lag the calls that cannot start in time
  are dropped, and every scheduled call is accounted for.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from protocol.plan import scheduled_arrivals
from tests.e2e_helpers import (
    ROOT,
    Agents,
    Result,
    free_port,
    run_master,
    stop_process,
    tagged_env,
    wait_serving,
)


class OpenTarget:
    """tests/open_target.py: stamps each request's arrival; may freeze for a window."""

    def __init__(self, tag: str, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "open_target.py"), "--port", str(self.port),
             *args], env=tagged_env(tag), stdout=subprocess.DEVNULL)
        wait_serving(self.proc, self.times, "tests/open_target.py")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/test"

    def times(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/__times", timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def agents(tag: str, tmp_path: Path) -> Iterator[Agents]:
    a = Agents(tag, free_port(), tmp_path)
    yield a
    codes = a.stop_all()
    assert all(code == 0 for code in codes.values()), codes


def write_conf(tmp_path: Path, conf: dict[str, Any]) -> Path:
    path = tmp_path / "open.yml"
    path.write_text(yaml.safe_dump({
        "benchmark_class_file": str(ROOT / "examples" / "http_fast.py"),
        "print_interval": 1, **conf}))
    return path


def ms(text: str) -> list[float]:
    """'1.2 ms / 3.4 ms / 5.6 ms' -> [1.2, 3.4, 5.6]"""
    return [float(part.split()[0]) for part in text.split("/")]


def count(r: Result, field: str) -> int:
    return int(r.final()[field].split()[0].replace(",", ""))


def test_the_rate_holds_over_two_agents_split_exactly_and_interleaved(
        tmp_path: Path, tag: str, agents: Agents) -> None:
    target = OpenTarget(tag)
    try:
        agents.start("a0")
        agents.start("a1")
        conf = write_conf(tmp_path, {"host": target.url, "arrival_rate": 400,
                                     "run_time": 10, "worker": 2, "max_users": 40,
                                     "pre_allocated_users": 40, "agent_timeout": 20})
        r = run_master(tmp_path, conf, tag, "--agents", "2", "--bind",
                       f"127.0.0.1:{agents.port}", timeout=120)
        arrivals = target.times()["arrivals"]
    finally:
        target.stop()
    assert r.code == 0, r.stderr
    scheduled = scheduled_arrivals(400, 1, 10)
    assert scheduled == 4000
    ok, fail = r.final_int("success count"), r.final_int("fail count")
    assert count(r, "calls scheduled") == scheduled
    assert count(r, "dropped calls") == 0
    assert ok + fail == scheduled and ok == len(arrivals)  # exact: what the target served
    started = r.final_float("calls started/s")
    assert started == pytest.approx(400, rel=0.02)
    assert r.final()["arrival rate (target)"] == "400/s (uniform)"
    # four workers of 1000 calls each, two per agent: 2000 per agent
    rows = {line.split()[0]: line.split() for line in r.section("agents:")}
    assert sorted(rows) == ["a0", "a1"]
    assert [int(rows[a][3]) for a in ("a0", "a1")] == [2000, 2000]
    # interleaved: the gaps between arrivals are around 2.5 ms, not three near 0 and one
    # of 10 ms (four workers in lockstep); the first and last second left out
    stamps = sorted(arrivals)
    steady = [t for t in stamps if stamps[0] + 1e9 <= t <= stamps[-1] - 1e9]
    gaps = [b - a for a, b in itertools.pairwise(steady)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(2.5e6, rel=0.05)
    assert statistics.median(gaps) > 0.4 * mean
    assert sum(g < 0.1 * mean for g in gaps) < 0.25 * len(gaps)


def stalled_run(tmp_path: Path, tag: str, **extra: Any) -> tuple[Result, dict[str, Any]]:
    """200 calls/s for 8 s on one worker with a pool of 5, the target frozen for 1 s
    from 3 s after its first request."""
    target = OpenTarget(tag, "--stall-at", "3", "--stall-for", "1")
    try:
        conf = write_conf(tmp_path, {"host": target.url, "arrival_rate": 200, "run_time": 8,
                                     "worker": 1, "max_users": 5, "pre_allocated_users": 5,
                                     **extra})
        r = run_master(tmp_path, conf, tag, "--json", str(tmp_path / "r.json"), timeout=120)
        seen = target.times()
    finally:
        target.stop()
    assert r.code == 0, r.stderr
    assert seen["stalled"] >= 1
    return r, seen


def test_a_stall_shows_in_the_corrected_latency_not_the_service_time(
        tmp_path: Path, tag: str) -> None:
    r, seen = stalled_run(tmp_path, tag)
    final = r.final()
    ok, fail = r.final_int("success count"), r.final_int("fail count")
    assert ok + fail == count(r, "calls scheduled") == 1600
    assert count(r, "dropped calls") == 0
    assert ok == len(seen["arrivals"])
    p99 = float(final["99% response time"].split()[0])
    service = ms(final["service time p50/p90/p99"])
    lag = ms(final["schedule lag p50/p90/p99"])
    late = count(r, "late calls")
    # ~200 calls were due in the frozen second: 12% of the run, so p99 is among them
    assert p99 > 500, final
    assert service[2] < 100, final  # only the 5 calls in flight took the second
    assert lag[2] > 500, final  # the wait for a free client is the difference
    assert p99 == pytest.approx(service[2] + lag[2], rel=0.5)
    assert 120 <= late <= 260, final


def test_calls_that_cannot_start_in_time_are_dropped_and_counted(
        tmp_path: Path, tag: str) -> None:
    r, seen = stalled_run(tmp_path, tag, max_schedule_lag="200ms")
    ok, fail = r.final_int("success count"), r.final_int("fail count")
    dropped = count(r, "dropped calls")
    assert ok + fail + dropped == count(r, "calls scheduled") == 1600
    assert 100 <= dropped <= 220  # the second's ~200 calls, less those within 200 ms
    assert ok == len(seen["arrivals"])
    assert count(r, "late calls") >= 20
    lag = ms(r.final()["schedule lag p50/p90/p99"])
    assert lag[2] <= 220  # no call started later than max_schedule_lag
