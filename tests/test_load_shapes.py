"""Load shapes end to end: real `loadmaster run` processes (embedded agent, or daemons),
workers and a counting HTTP target on loopback.

- Stages ramp up, hold and ramp down: the result file's per-second series follows the
  plan (protocol/plan.py: client_windows), clients and calls alike.
- Each wait form gives its per-client rate, and the gaps between a client's calls (which
  the client records itself) have the form's shape: start to start for pacing, end to
  start for a constant wait, spread uniformly for [min, max].
- ``iterations`` ends the run after exactly N calls, failures included, as the target
  counts them, split exactly over the workers, well before run_time.
- A mix splits the clients by weight exactly (each client requests its own path, so the
  target tells how many clients of each class ran, and on which worker); each class has
  its own row.
- Bad shapes through the CLI: the one-line error and its exit code.

Timing on a shared machine is noisy: the shape is compared with generous tolerances.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.plan import (
    RateProfile,
    class_counts,
    class_sequence,
    client_windows,
    stage_users,
)
from tests.e2e_helpers import Agents, Result, Target, free_port, run_master, write_job
from tests.test_result_file import load_result

# Each client requests /test/<kind>/<pid>-<client id>: the target's by_path counts tell
# which clients ran, of which class, in which worker process. Timed records its calls.
SHOP_CLIENT = '''
import json
import os
import time
from protocol import ClientProtocol
from protocol.http import HttpClient


class _Shopper(ClientProtocol):
    kind = "hit"
    record_to = ""

    @staticmethod
    def global_init(custom_conf=None):
        _Shopper.record_to = custom_conf.get("record_to", "")

    def init_before_use(self, host):
        self._http = HttpClient(host)
        self._path = f"/test/{self.kind}/{os.getpid()}-{id(self)}"
        self._calls = []

    async def execute(self):
        began = time.monotonic()
        try:
            (await self._http.get(self._path)).raise_for_status()
        finally:
            self._calls.append((began, time.monotonic()))

    async def shutdown(self):
        await self._http.close()
        if self.record_to:
            with open(f"{self.record_to}.{os.getpid()}-{id(self)}", "w") as f:
                json.dump(self._calls, f)


class Hit(_Shopper):
    pass


class Browse(_Shopper):
    kind = "browse"


class Buy(_Shopper):
    name = "checkout"  # its row's name
    kind = "buy"
'''


def shop_job(workdir: Path, conf: dict[str, Any]) -> Path:
    return write_job(workdir, {"benchmark_class": "Hit", **conf}, client=SHOP_CLIENT,
                     client_path="shop.py")


def paths_by_kind(served: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The target's requests per client path, by kind: {"browse": {"pid-id": n}, ...}."""
    out: dict[str, dict[str, int]] = {}
    for path, n in served["by_path"].items():
        parts = path.split("/")  # "", "test", kind, client
        if len(parts) == 4:
            out.setdefault(parts[2], {})[parts[3]] = n
    return out


def ran(r: Result, tmp_path: Path) -> dict[str, Any]:
    assert r.code == 0, (r.stdout[-3000:], r.stderr)
    return load_result(tmp_path / "result.json")


@pytest.fixture
def slow_target(tag: str) -> Iterator[Target]:
    """Answers after 40 ms: a service time that pacing absorbs and a constant wait adds."""
    t = Target(tag, delay_ms=40)
    yield t
    t.stop()


@pytest.fixture
def failing_target(tag: str) -> Iterator[Target]:
    t = Target(tag, fail_every=7)
    yield t
    t.stop()


# -- stages -------------------------------------------------------------------------------
STAGES = [(3.0, 6.0), (3.0, 6.0), (3.0, 0.0)]  # 0 -> 6 over 3 s, 6 for 3 s, -> 0 over 3 s
PACING = 0.1


def planned_calls_per_second(stages: list[tuple[float, float]], seconds: int) -> list[int]:
    """Calls a second the plan makes with pacing PACING: client k calls at s, s + 0.1, ...
    in each of its windows [s, e)."""
    out = [0] * seconds
    for spans in client_windows(0, 1, stages):
        for start, end in spans:
            i = 0
            while (t := start + i * PACING) < min(end, sum(d for d, _ in stages)):
                out[min(int(t), seconds - 1)] += 1
                i += 1
    return out


def test_stages_ramp_up_hold_and_ramp_down_second_by_second(
        tmp_path: Path, tag: str, target: Target) -> None:
    stages = [{"duration": d, "users": int(u)} for d, u in STAGES]
    conf = shop_job(tmp_path, {"host": target.url, "stages": stages,
                               "wait_time": {"pacing": PACING}, "worker": 2})
    started = time.monotonic()
    r = run_master(tmp_path, conf, tag, "--out", str(tmp_path / "result.json"), timeout=60)
    wall = time.monotonic() - started
    doc = ran(r, tmp_path)
    served = target.counts()
    assert doc["config"]["run_time"] == 9.0 and doc["users_planned"] == 6
    assert r.final_int("users") == 6
    assert wall < 30
    series = doc["series"]
    ok, clients = series["ok"], series["clients"]
    assert len(ok) >= 9 and sum(ok[9:]) <= 6  # after 9 s at most the calls in flight
    plan = planned_calls_per_second(STAGES, 9)
    assert plan == [15, 35, 55, 60, 60, 60, 55, 35, 15]
    shape = ok[:9]
    shape[8] += sum(ok[9:])
    # each second near the plan, the plateau at 6 clients x 10 calls a second
    for got, want in zip(shape, plan, strict=True):
        assert abs(got - want) <= 8 + 0.15 * want, (shape, plan)
    for second in (3, 4, 5):
        assert shape[second] == pytest.approx(60, rel=0.25), shape
    assert shape[0] < 0.5 * 60 and shape[8] < 0.5 * 60, shape
    assert shape[0] < shape[1] < shape[2] and shape[6] > shape[7] > shape[8], shape
    # clients at the end of each second: ceil(target), give or take the client that
    # starts or stops at that very moment
    for second in range(1, 10):
        want = math.ceil(stage_users(STAGES, second))
        assert abs(clients[second - 1] - want) <= 1, (second, clients)
    assert clients[3] == clients[4] == 6 and max(clients) == 6, clients
    assert clients[8] <= 1 and clients[-1] == 0, clients
    # every call reached the target and was counted
    assert r.final_int("success count") == served["ok"] == sum(ok)
    assert sum(ok) == pytest.approx(sum(plan), rel=0.1)
    # six clients ran, no more
    assert len(paths_by_kind(served)["hit"]) == 6


# -- wait forms ---------------------------------------------------------------------------
WAIT_USERS, WAIT_RUN = 3, 4


def recorded_calls(tmp_path: Path) -> list[list[tuple[float, float]]]:
    """Each client's calls, (start, end) in monotonic seconds, as it recorded them."""
    out = []
    for path in sorted(tmp_path.glob("calls.*")):
        out.append([(a, b) for a, b in json.loads(path.read_text())])
    return out


def gaps(calls: list[list[tuple[float, float]]], start_to_start: bool) -> list[float]:
    """Between each client's successive calls: start to start, or end to start."""
    out = []
    for mine in calls:
        for (a0, a1), (b0, _) in itertools.pairwise(mine):
            out.append(b0 - (a0 if start_to_start else a1))
    return out


@pytest.mark.parametrize("form", ["constant", "range", "pacing", "throughput",
                                  "pacing shorter than the call"])
def test_each_wait_form_gives_its_rate_per_client(
        tmp_path: Path, tag: str, slow_target: Target, form: str) -> None:
    wait: Any = {"constant": 0.1, "range": [0.05, 0.15], "pacing": {"pacing": 0.1},
                 "throughput": {"throughput": 10},
                 "pacing shorter than the call": {"pacing": "20ms"}}[form]
    conf = shop_job(tmp_path, {"host": slow_target.url, "users": WAIT_USERS,
                               "hatch_rate": 100, "run_time": WAIT_RUN, "worker": 1,
                               "wait_time": wait, "record_to": str(tmp_path / "calls")})
    doc = ran(run_master(tmp_path, conf, tag, "--out", str(tmp_path / "result.json"),
                         timeout=60), tmp_path)
    total = doc["totals"]["all"]
    assert total["fail"] == 0
    service = total["mean_ns"] / 1e9
    assert 0.035 < service < 0.2  # the target's 40 ms, and what the machine adds
    rate = total["ok"] / (WAIT_USERS * WAIT_RUN)  # calls a second, per client
    calls = recorded_calls(tmp_path)
    assert len(calls) == WAIT_USERS
    assert sum(map(len, calls)) == total["ok"] == slow_target.counts()["ok"]
    starts = gaps(calls, start_to_start=True)
    pauses = gaps(calls, start_to_start=False)
    if form in ("constant", "range"):
        # a sleep of 0.1 s on average after each call: 1 / (0.1 + service) calls a second
        assert rate == pytest.approx(1 / (0.1 + service), rel=0.15), (rate, service)
        assert statistics.fmean(pauses) == pytest.approx(0.1, abs=0.015)
        if form == "constant":
            assert statistics.pstdev(pauses) < 0.01, pauses
            assert min(pauses) >= 0.099
        else:  # uniform over [0.05, 0.15]: a standard deviation of 0.1 / sqrt(12)
            assert min(pauses) >= 0.049 and max(pauses) <= 0.15 + 0.02, pauses
            assert 0.018 < statistics.pstdev(pauses) < 0.04, pauses
    elif form in ("pacing", "throughput"):
        # start to start every 0.1 s whatever the service time: 10 calls a second
        assert rate == pytest.approx(10, rel=0.1), rate
        assert statistics.median(starts) == pytest.approx(0.1, abs=0.01), starts
        assert statistics.fmean(starts) == pytest.approx(0.1, abs=0.01)
    else:
        # each call takes longer than the pacing: the next starts at once
        assert rate == pytest.approx(1 / service, rel=0.2), (rate, service)
        assert statistics.median(pauses) < 0.005, pauses


# -- iterations ---------------------------------------------------------------------------
def test_iterations_stop_the_run_after_exactly_n_calls(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = shop_job(tmp_path, {"host": target.url, "users": 5, "run_time": 30, "worker": 2,
                               "iterations": 1001})
    started = time.monotonic()
    r = run_master(tmp_path, conf, tag, "--out", str(tmp_path / "result.json"), timeout=60)
    wall = time.monotonic() - started
    doc = ran(r, tmp_path)
    served = target.counts()
    ok, fail = r.final_int("success count"), r.final_int("fail count")
    assert (ok, fail) == (1001, 0)
    assert served["ok"] + served["fail"] == 1001
    assert doc["totals"]["all"]["ok"] == 1001
    assert r.final_float("run time") < 10 and wall < 25  # not the 30 s of run_time
    assert "1001 iterations" in r.stdout + r.stderr
    assert doc["config"]["iterations"] == 1001


def test_iterations_fewer_than_clients_are_still_exact(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = shop_job(tmp_path, {"host": target.url, "users": 5, "run_time": 30, "worker": 2,
                               "iterations": 3})
    r = run_master(tmp_path, conf, tag, timeout=60)
    assert r.code == 0, r.stderr
    assert (r.final_int("success count"), r.final_int("fail count")) == (3, 0)
    served = target.counts()
    assert served["ok"] + served["fail"] == 3
    assert r.final_float("run time") < 10


def test_failed_calls_count_toward_iterations_shared_exactly_over_two_agents(
        tmp_path: Path, tag: str, failing_target: Target) -> None:
    agents = Agents(tag, free_port(), tmp_path)
    try:
        agents.start("a0")
        agents.start("a1")
        conf = shop_job(tmp_path, {"host": failing_target.url, "users": 5, "run_time": 30,
                                   "worker": 1, "iterations": 1001, "agent_timeout": 20})
        started = time.monotonic()
        r = run_master(tmp_path, conf, tag, "--agents", "2", "--bind",
                       f"127.0.0.1:{agents.port}", "--out", str(tmp_path / "result.json"),
                       timeout=90)
        wall = time.monotonic() - started
    finally:
        codes = agents.stop_all()
    assert all(code == 0 for code in codes.values()), codes
    doc = ran(r, tmp_path)
    served = failing_target.counts()
    ok, fail = r.final_int("success count"), r.final_int("fail count")
    assert fail > 100  # every 7th request failed
    assert ok + fail == 1001
    assert (ok, fail) == (served["ok"], served["fail"])
    # worker 0 makes len(range(0, 1001, 2)) = 501 calls, worker 1 500: one per agent
    per_agent = sorted(a["ok"] + a["fail"] for a in doc["agents"])
    assert per_agent == [500, 501]
    assert wall < 40 and r.final_float("run time") < 10


# -- mixes --------------------------------------------------------------------------------
def test_a_mix_splits_the_clients_by_weight_exactly_each_class_its_own_row(
        tmp_path: Path, tag: str, target: Target) -> None:
    users, weights = 8, {"Browse": 3, "Buy": 1}
    conf = shop_job(tmp_path, {"host": target.url, "users": users, "hatch_rate": 100,
                               "run_time": 3, "worker": 2, "benchmark_class": weights,
                               "wait_time": {"pacing": 0.1}})
    doc = ran(run_master(tmp_path, conf, tag, "--out", str(tmp_path / "result.json"),
                         timeout=60), tmp_path)
    served = target.counts()
    rows = {name: (st["ok"], st["fail"]) for name, st in doc["totals"]["names"].items()}
    assert set(rows) == {"Browse", "checkout"}  # Buy's row is its `name`; Hit did not run
    # the clients per class: 6 and 2, exactly
    kinds = paths_by_kind(served)
    assert set(kinds) == {"browse", "buy"}
    assert [len(kinds["browse"]), len(kinds["buy"])] == class_counts(users, [3, 1]) == [6, 2]
    # and on each worker the classes of its clients k = w, w + 2, ... by class_sequence
    seq = class_sequence(users, [3, 1])
    planned = Counter((sum(seq[k] == 0 for k in range(w, users, 2)),
                       sum(seq[k] == 1 for k in range(w, users, 2))) for w in range(2))
    per_pid: dict[str, list[int]] = {}
    for c, kind in enumerate(("browse", "buy")):
        for client in kinds[kind]:
            per_pid.setdefault(client.split("-")[0], [0, 0])[c] += 1
    assert Counter(tuple(v) for v in per_pid.values()) == planned
    # the calls follow the clients: 3 to 1, and each row counts its own class's calls
    assert rows["Browse"][0] == sum(kinds["browse"].values())
    assert rows["checkout"][0] == sum(kinds["buy"].values())
    assert rows["Browse"][0] / rows["checkout"][0] == pytest.approx(3, rel=0.1)
    assert doc["agents"][0]["clients"] == users
    series = doc["series"]["names"]
    assert set(series) == {"Browse", "checkout"}
    assert sum(series["checkout"]["ok"]) == rows["checkout"][0]


def test_a_worker_without_clients_of_a_mix_does_not_hold_up_iterations(
        tmp_path: Path, tag: str, target: Target) -> None:
    """Two clients over three workers: worker 2 runs none, of either class. The run ends
    once the 50 iterations are made, as it does with one class."""
    conf = shop_job(tmp_path, {"host": target.url, "users": 2, "run_time": 10,
                               "worker": 3, "iterations": 50,
                               "benchmark_class": {"Browse": 1, "Buy": 1}})
    r = run_master(tmp_path, conf, tag, timeout=60)
    assert r.code == 0, r.stderr
    assert r.final_int("success count") + r.final_int("fail count") == 50
    assert r.final_float("run time") < 5, r.final()


# -- the open model ------------------------------------------------------------------------
def scheduled(doc: dict[str, Any], name: str) -> int:
    """A name's calls on the schedule: successes, failures and drops."""
    return int(doc["totals"]["names"][name]["open"]["scheduled"])


def test_open_stages_schedule_exactly_the_ramps_arrivals(
        tmp_path: Path, tag: str, target: Target) -> None:
    stages = [(2.0, 60.0), (2.0, 60.0), (2.0, 0.0)]  # calls a second: up, hold, down
    conf = shop_job(tmp_path, {
        "host": target.url, "worker": 2, "max_users": 20,
        "stages": [{"duration": d, "arrival_rate": r} for d, r in stages]})
    r = run_master(tmp_path, conf, tag, "--out", str(tmp_path / "result.json"), timeout=60)
    doc = ran(r, tmp_path)
    want = RateProfile(60.0, 1.0, stages).arrivals_before(6.0)
    assert want == 240  # 60 up, 120 held, 60 down
    assert scheduled(doc, "Hit") == want
    assert doc["totals"]["names"]["Hit"]["ok"] == target.counts()["ok"]
    per_second = doc["series"]["ok"]
    assert per_second[0] < 45 and max(per_second[1:4]) >= 45, per_second  # the ramp
    assert "stages, up to 60/s" in r.stdout


def test_an_open_mix_splits_the_rate_by_weight_exactly(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = shop_job(tmp_path, {"host": target.url, "worker": 2, "arrival_rate": 80,
                               "run_time": 2, "max_users": 8,
                               "benchmark_class": {"Browse": 3, "Buy": 1}})
    doc = ran(run_master(tmp_path, conf, tag, "--out", str(tmp_path / "result.json"),
                         timeout=60), tmp_path)
    assert (scheduled(doc, "Browse"), scheduled(doc, "checkout")) == (120, 40)
    kinds = paths_by_kind(target.counts())
    assert sum(kinds["browse"].values()) == doc["totals"]["names"]["Browse"]["ok"]
    assert sum(kinds["buy"].values()) == doc["totals"]["names"]["checkout"]["ok"]


@pytest.mark.parametrize("arrivals", ["uniform", "poisson"])
def test_open_iterations_cap_the_schedule_and_end_the_run(
        tmp_path: Path, tag: str, target: Target, arrivals: str) -> None:
    conf = shop_job(tmp_path, {"host": target.url, "worker": 2, "arrival_rate": 300,
                               "run_time": 20, "iterations": 150, "arrivals": arrivals,
                               "max_users": 10, "benchmark_class": {"Browse": 2, "Buy": 1}})
    r = run_master(tmp_path, conf, tag, "--out", str(tmp_path / "result.json"), timeout=60)
    doc = ran(r, tmp_path)
    assert (scheduled(doc, "Browse"), scheduled(doc, "checkout")) == (100, 50)
    assert "the 150 iterations: the run ended before run_time" in r.stdout
    assert r.final_float("run time") < 5


def test_open_iterations_beyond_the_schedule_leave_run_time_alone(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = shop_job(tmp_path, {"host": target.url, "worker": 2, "arrival_rate": 20,
                               "run_time": 2, "iterations": 1000, "arrivals": "poisson"})
    r = run_master(tmp_path, conf, tag, timeout=60)
    assert r.code == 0, r.stderr
    assert "iterations" not in r.stdout
    assert r.final_float("run time") == pytest.approx(2.0, abs=0.05)


# -- bad input through the CLI --------------------------------------------------------------
@pytest.mark.parametrize(("conf", "key", "says"), [
    ({"stages": [{"duration": 1, "users": 2}, {"duration": 1, "arrival_rate": 5}]},
     "stages", "stages[1]: arrival_rate where the first stage has users"),
    ({"users": 2, "run_time": 1, "wait_time": [0.15, 0.05]}, "wait_time",
     "[min, max] with min over max"),
    ({"users": 2, "run_time": 1, "benchmark_class": {"Browse": 1, "Buy": 0}},
     "benchmark_class", "Buy: weight 0"),
    # 2 clients by 3:1: 1.5 and 0.5, the tie to the first class: Browse 2, Buy none
    ({"users": 2, "run_time": 1, "benchmark_class": {"Browse": 3, "Buy": 1}},
     "benchmark_class", "Buy gets no client of the 2 (users) split by weight"),
])
def test_a_bad_shape_is_one_line_and_exit_2(tmp_path: Path, tag: str, target: Target,
                                            conf: dict[str, Any], key: str,
                                            says: str) -> None:
    path = shop_job(tmp_path, {"host": target.url, **conf})
    r = run_master(tmp_path, path, tag, timeout=30)
    assert r.code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"loadmaster: {path}: key {key!r}: "), lines[0]
    assert says in lines[0]
    assert "final benchmark" not in r.stdout
    assert target.counts()["ok"] == 0


def test_a_class_the_file_lacks_is_a_config_error_naming_benchmark_class(
        tmp_path: Path, tag: str, target: Target) -> None:
    path = shop_job(tmp_path, {"host": target.url, "users": 4, "run_time": 2, "worker": 2,
                               "benchmark_class": {"Browse": 3, "Nope": 1}})
    r = run_master(tmp_path, path, tag, timeout=30)
    assert r.code == 2, (r.stdout, r.stderr)  # found in the file's source, before any agent
    assert r.stderr.startswith(f"loadmaster: {path}: key 'benchmark_class': 'Nope' is not a "
                               f"class of shop.py (it defines "), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "final benchmark" not in r.stdout
    assert target.counts()["ok"] == 0
