"""A saturated load generator is flagged end to end: real master, agent and worker.

The busy client spins the CPU for 70 ms in each call without awaiting, so its worker
uses a whole core and its event loop lags (the scheduler gives the loop a turn after
each such call; the lag probe, due every 100 ms on a fixed schedule, runs up to 70 ms
late); the sleeping client does neither. No network: neither client does any I/O.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_helpers import Result, run_master, write_job

BUSY_CLIENT = '''
import time
from protocol import ClientProtocol

class Busy(ClientProtocol):
    async def execute(self):
        end = time.perf_counter() + 0.07
        while time.perf_counter() < end:
            pass
'''

SLEEPY_CLIENT = '''
import asyncio
from protocol import ClientProtocol

class Sleepy(ClientProtocol):
    async def execute(self):
        await asyncio.sleep(0.01)
'''


def run(workdir: Path, tag: str, client: str, wait_time: float, code: int = 0,
        **keys: Any) -> Result:
    conf = write_job(workdir, {"host": "http://127.0.0.1:1/", "users": 1, "hatch_rate": 10,
                               "run_time": 5, "worker": 1, "wait_time": wait_time, **keys},
                     client=client, client_path="client.py")
    r = run_master(workdir, conf, tag, timeout=60)
    # saturation does not change the exit code, unless generator: {on_saturation: fail}
    assert r.code == code, (r.stdout, r.stderr)
    return r


def agent_row(r: Result) -> dict[str, str]:
    """The final agents table's only row, read by its header's labels."""
    i = r.stdout.rfind("final benchmark:")
    lines = r.stdout[i:].splitlines()
    header = lines[lines.index("agents:") + 1]
    labels = re.split(r"\s{2,}", header.strip())
    (row,) = r.section("agents:")
    values = row.split()
    assert len(values) == len(labels), (header, row)
    return dict(zip(labels, values, strict=True))


@pytest.mark.parametrize("wait_time", [0, 0.001])
def test_a_client_that_spins_the_cpu_saturates_its_agent(
        tmp_path: Path, tag: str, wait_time: float) -> None:
    r = run(tmp_path, tag, BUSY_CLIENT, wait_time)
    row = agent_row(r)
    assert row["generator"] == "SATURATED", r.stdout
    assert float(row["cpu %"]) >= 85, r.stdout
    assert float(row["max lag ms"]) > 20, r.stdout
    assert row["state"] == "ok"
    (note,) = [line for line in r.stdout.splitlines() if line.startswith("note: agent local")]
    assert re.fullmatch(r"note: agent local was saturated \(over 90% of a core or loop lag over "
                        r"20 ms for 3 s in a row: worker 0 from second [1-3] \((cpu|loop lag|cpu, "
                        r"loop lag)\)\): its figures "
                        r"measure the load generator as much as the target; add workers or "
                        r"agents", note), note
    live = [line for line in r.stdout.splitlines() if line.startswith("agent local ")]
    assert live, r.stdout
    # the live blocks said so too, once three seconds had been seen
    assert live[-1].endswith(", SATURATED"), r.stdout


def test_a_client_that_sleeps_is_not_flagged(tmp_path: Path, tag: str) -> None:
    r = run(tmp_path, tag, SLEEPY_CLIENT, 0)
    row = agent_row(r)
    assert row["generator"] == "ok", r.stdout
    assert float(row["cpu %"]) < 50, r.stdout
    assert float(row["max lag ms"]) < 20, r.stdout
    assert r.final_int("success count") > 100
    assert "saturated" not in r.stdout and "SATURATED" not in r.stdout
    live = [line for line in r.stdout.splitlines() if line.startswith("agent local ")]
    assert live and all("cpu " in line and "loop lag " in line for line in live), r.stdout


def test_on_saturation_fail_exits_7_and_says_so(tmp_path: Path, tag: str) -> None:
    r = run(tmp_path, tag, BUSY_CLIENT, 0, code=7,
            generator={"on_saturation": "fail", "for": "2s"})
    assert agent_row(r)["generator"] == "SATURATED", r.stdout
    (note,) = [line for line in r.stdout.splitlines() if line.startswith("note: agent local")]
    assert "for 2 s in a row" in note and note.endswith("(on_saturation: fail, exit 7)"), note


def test_a_looser_rule_does_not_flag_the_same_client(tmp_path: Path, tag: str) -> None:
    """The spinning client uses about a whole core and lags 70 ms: not over a rule of
    100% of a core and a lag of a second."""
    r = run(tmp_path, tag, BUSY_CLIENT, 0,
            generator={"max_cpu": "100%", "max_loop_lag": "1s", "on_saturation": "fail"})
    assert agent_row(r)["generator"] == "ok", r.stdout
    assert "saturated" not in r.stdout


def test_a_failed_threshold_wins_over_a_saturated_generator(tmp_path: Path, tag: str) -> None:
    r = run(tmp_path, tag, BUSY_CLIENT, 0, code=6, thresholds=["p99 < 1ms"],
            generator={"on_saturation": "fail"})
    assert agent_row(r)["generator"] == "SATURATED", r.stdout
    assert "thresholds: 0 passed, 1 failed (exit 6)" in r.stdout


def run_open(workdir: Path, tag: str, client: str, code: int = 0, **keys: Any) -> Result:
    conf = write_job(workdir, {"host": "http://127.0.0.1:1/", "arrival_rate": 20,
                               "run_time": 5, "worker": 1, **keys},
                     client=client, client_path="client.py")
    r = run_master(workdir, conf, tag, timeout=60)
    assert r.code == code, (r.stdout, r.stderr)
    return r


def counted(r: Result, what: str) -> int:
    """A count of the final block, whatever words follow it."""
    return int(r.final()[what].split()[0])


# each call takes half a second: 20 calls/s need 10 clients busy at once
SLOW_CLIENT = '''
import asyncio
from protocol import ClientProtocol

class Slow(ClientProtocol):
    async def execute(self):
        await asyncio.sleep(0.5)
'''


def test_an_open_model_that_falls_behind_its_schedule_is_saturated(
        tmp_path: Path, tag: str) -> None:
    """Two clients for a schedule that needs ten: the calls wait for a client, later and
    later, while the worker's CPU and loop stay idle; the rule's open-model part flags it,
    names why, and with on_saturation: fail the run exits 7."""
    r = run_open(tmp_path, tag, SLOW_CLIENT, code=7, max_users=2, pre_allocated_users=2,
                 max_schedule_lag="2s", generator={"on_saturation": "fail"})
    row = agent_row(r)
    assert row["generator"] == "SATURATED", r.stdout
    assert float(row["cpu %"]) < 50 and float(row["max lag ms"]) < 20, r.stdout
    (note,) = [line for line in r.stdout.splitlines() if line.startswith("note: agent local")]
    assert re.fullmatch(r"note: agent local was saturated \(over 90% of a core, loop lag over "
                        r"20 ms or over 100 ms behind its schedule, for 3 s in a row: worker 0 "
                        r"from second [1-3] \(behind schedule\)\): its figures measure the "
                        r"load generator as much as the target; add workers or agents, or "
                        r"clients to the pool \(max_users\) if the calls are slow "
                        r"\(on_saturation: fail, exit 7\)", note), note
    assert counted(r, "late calls") > 0 and counted(r, "dropped calls") > 0, r.stdout


def test_an_open_model_with_pool_enough_is_not_flagged(tmp_path: Path, tag: str) -> None:
    r = run_open(tmp_path, tag, SLOW_CLIENT, max_users=40, pre_allocated_users=40,
                 generator={"on_saturation": "fail"})
    assert agent_row(r)["generator"] == "ok", r.stdout
    assert "saturated" not in r.stdout
    assert counted(r, "dropped calls") == 0, r.stdout


def test_a_looser_behind_schedule_rule_does_not_flag_it(tmp_path: Path, tag: str) -> None:
    """The same two clients, but calls are dropped once 1 s late: never 3 s behind."""
    r = run_open(tmp_path, tag, SLOW_CLIENT, max_users=2, pre_allocated_users=2,
                 max_schedule_lag="1s",
                 generator={"max_behind_schedule": "3s", "on_saturation": "fail"})
    assert agent_row(r)["generator"] == "ok", r.stdout
    assert counted(r, "dropped calls") > 0, r.stdout
