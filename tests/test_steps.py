"""Named steps (``ClientProtocol.step``): a row of their own beside the whole call's.

In-process with a real ``Totals`` in ``current_totals`` (success, failure and its error,
cancellation, nesting, bad names, no totals); under a real ``ClientScheduler``; and end
to end, a ``loadmaster run`` against a loopback target, through the live deltas, the
final totals, the console's final block and the result file.
"""

from __future__ import annotations

import asyncio
import contextvars
import csv
import itertools
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
import uvloop

from loadagent.scheduler import ClientScheduler
from protocol.calls import MAX_STEP_NAME, Step, current_totals
from protocol.client import ClientProtocol
from protocol.histogram import bucket_index
from protocol.stats import Totals
from tests.e2e_helpers import ROOT, Target, run_master, write_job
from tests.test_result_file import load_result


class Shop(ClientProtocol):
    async def execute(self) -> None:
        return None


class Named(ClientProtocol):
    name = "store"

    async def execute(self) -> None:
        return None


def in_worker(main: Callable[[], Coroutine[Any, Any, None]],
              totals: Totals | None) -> None:
    """``main()`` on a loop, with ``totals`` in ``current_totals`` as a worker's call has."""
    async def with_totals() -> None:
        current_totals.set(totals)
        await asyncio.wait_for(main(), 10)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(with_totals())


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Every read of the steps' clock advances it by 1,000 ns."""
    ticks = itertools.count(0, 1000)
    monkeypatch.setattr("protocol.calls.perf_counter_ns", lambda: next(ticks))
    yield 1000


# -- in process ---------------------------------------------------------------------------
def test_a_step_that_ends_normally_is_a_timed_success_of_its_row(clock: int) -> None:
    totals = Totals()

    async def main() -> None:
        async with Shop().step("login"):
            await asyncio.sleep(0)

    in_worker(main, totals)
    st = totals.ops["login"]
    assert (st.ok, st.fail) == (1, 0)
    assert st.sum_ns == st.min_ns == st.max_ns == clock
    assert st.hist.counts == {bucket_index(clock): 1}
    assert totals.errors == {}
    assert list(totals.ops) == ["login"]  # not the call's row: the scheduler counts that


def test_many_steps_time_as_the_call_loop_times_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    durations = [300, 5_000, 123_456_789, 40, 5_000]
    ticks = iter(itertools.chain.from_iterable((0, d) for d in durations))
    monkeypatch.setattr("protocol.calls.perf_counter_ns", lambda: next(ticks))
    totals = Totals()

    async def main() -> None:
        client = Shop()
        for _ in durations:
            async with client.step("browse"):
                pass

    in_worker(main, totals)
    st = totals.ops["browse"]
    assert (st.ok, st.sum_ns, st.min_ns, st.max_ns) == (5, sum(durations), 40, 123_456_789)
    expected: dict[int, int] = {}
    for d in durations:
        expected[bucket_index(d)] = expected.get(bucket_index(d), 0) + 1
    assert st.hist.counts == expected


def test_a_step_that_raises_is_a_failure_with_its_error_and_the_exception_goes_on() -> None:
    totals = Totals()

    async def main() -> None:
        with pytest.raises(ValueError, match="bad password"):
            async with Shop().step("login"):
                raise ValueError("bad password")

    in_worker(main, totals)
    st = totals.ops["login"]
    assert (st.ok, st.fail, st.sum_ns) == (0, 1, 0)
    assert st.hist.total == 0
    assert totals.errors == {("login", "ValueError", "bad password"): 1}


def test_a_cancelled_step_counts_nothing_and_the_cancellation_goes_on() -> None:
    totals = Totals()

    async def main() -> None:
        entered = asyncio.Event()

        async def call() -> None:
            async with Shop().step("login"):
                entered.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(call())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    in_worker(main, totals)
    assert totals.is_empty()
    assert totals.errors == {}


def test_steps_nest_each_its_own_row(clock: int) -> None:
    totals = Totals()

    async def main() -> None:
        client = Shop()
        async with client.step("checkout"):
            async with client.step("login"):
                pass
            with client.step("pay"):  # a plain `with` too
                pass
        with pytest.raises(RuntimeError):
            async with client.step("checkout"), client.step("login"):  # nested too
                raise RuntimeError("declined")

    in_worker(main, totals)
    ops = totals.ops
    assert {name: (st.ok, st.fail) for name, st in ops.items()} == {
        "checkout": (1, 1), "login": (1, 1), "pay": (1, 0)}
    # the outer step's clock reads bracket the inner ones': 5 ticks in all, 4 apart
    assert ops["checkout"].sum_ns == 5 * clock and ops["login"].sum_ns == clock
    assert totals.errors == {("checkout", "RuntimeError", "declined"): 1,
                             ("login", "RuntimeError", "declined"): 1}


def test_tasks_a_call_starts_count_their_steps_too() -> None:
    totals = Totals()

    async def main() -> None:
        client = Shop()

        async def part(name: str) -> None:
            async with client.step(name):
                await asyncio.sleep(0)

        await asyncio.gather(part("images"), part("scripts"), part("images"))

    in_worker(main, totals)
    assert {name: st.ok for name, st in totals.ops.items()} == {"images": 2, "scripts": 1}


def test_without_totals_a_step_just_runs() -> None:
    ran = []

    async def main() -> None:
        async with Shop().step("login"):
            ran.append(1)
        with pytest.raises(KeyError):
            async with Shop().step("login"):
                raise KeyError("x")
        with Shop().step("sync"):
            ran.append(2)

    in_worker(main, None)
    assert ran == [1, 2]
    # and with nothing set at all: a unit test of a client, a debug run
    with Shop().step("login"):
        ran.append(3)
    assert ran == [1, 2, 3]


def test_the_totals_are_those_of_the_context_the_step_is_entered_in() -> None:
    totals = Totals()
    step = Shop().step("login")  # made outside any worker context
    ctx = contextvars.copy_context()
    ctx.run(current_totals.set, totals)
    ctx.run(step.__enter__)
    ctx.run(step.__exit__, None, None, None)
    assert totals.ops["login"].ok == 1


class Kind(StrEnum):
    LOGIN = "login"


def test_a_str_subclass_names_the_row_by_its_value() -> None:
    totals = Totals()

    async def main() -> None:
        async with Shop().step(Kind.LOGIN):
            pass

    in_worker(main, totals)
    (name,) = totals.ops
    assert type(name) is str and name == "login"


@pytest.mark.parametrize("name, error, message", [
    (None, TypeError, "must be a str, got NoneType"),
    (42, TypeError, "must be a str, got int"),
    (b"login", TypeError, "must be a str, got bytes"),
    ("", ValueError, "1-200 printable characters"),
    ("   ", ValueError, "not blank"),
    ("log\nin", ValueError, "printable"),
    ("x" * (MAX_STEP_NAME + 1), ValueError, "1-200 printable"),
    ("Shop", ValueError, "a client class's name"),
])
def test_a_bad_name_is_refused_where_the_step_is_made(name: Any, error: type[Exception],
                                                      message: str) -> None:
    with pytest.raises(error, match=message):
        Shop().step(name)


def test_the_own_name_is_the_class_attribute_when_set() -> None:
    with pytest.raises(ValueError, match="'store' is a client class's name"):
        Named().step("store")
    assert isinstance(Named().step("Named"), Step)  # the class name is free then
    assert isinstance(Shop().step("x" * MAX_STEP_NAME), Step)


def test_another_class_of_the_run_is_refused_too() -> None:
    """In a mix, a step named like another class (whose row this worker may not have yet)
    would take that class's calls out of the totals: refused, when made and when it
    ends."""
    from protocol.calls import call_names

    call_names.update({"Shop", "Buy"})
    try:
        with pytest.raises(ValueError, match="'Buy' is a client class's name"):
            Shop().step("Buy")
        totals = Totals()
        token = current_totals.set(totals)
        try:
            with pytest.raises(ValueError, match="'Buy' is the name of a client class's"), \
                    Step("Buy"):
                pass
        finally:
            current_totals.reset(token)
        assert "Buy" not in totals.ops
    finally:
        call_names.clear()


def test_import_protocol_stays_light() -> None:
    # `import protocol` is in the master's command line and every client file
    code = "import sys, protocol; sys.exit('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=30).returncode == 0


# -- under the worker's scheduler -----------------------------------------------------------
class Steps(ClientProtocol):
    """Two steps every call; ``fail_every``: the second fails every so many calls."""

    fail_every = 0

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def execute(self) -> None:
        self.calls += 1
        async with self.step("login"):
            await asyncio.sleep(0)
        async with self.step("browse"):
            await asyncio.sleep(0)
            if self.fail_every and self.calls % self.fail_every == 0:
                raise LookupError("no such page")


class FailingSteps(Steps):
    fail_every = 3


def scheduled(cls: type[ClientProtocol], clients: int = 4) -> Totals:
    totals = Totals()

    async def main() -> None:
        sched = ClientScheduler(cls, "h", 0.0, totals)
        sched.start(asyncio.get_running_loop().time(), [0.0] * clients)
        await asyncio.sleep(0.2)
        await sched.stop(5.0)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 20))
    return totals


def test_under_the_scheduler_each_step_counts_every_call() -> None:
    totals = scheduled(Steps)
    call, login, browse = (totals.ops[n] for n in ("Steps", "login", "browse"))
    assert call.ok > 100 and call.fail == 0
    assert login.ok == browse.ok == call.ok
    assert login.fail == browse.fail == 0
    assert login.hist.total == browse.hist.total == call.ok
    # a step is part of its call: never longer than it
    assert login.sum_ns + browse.sum_ns <= call.sum_ns
    assert totals.errors == {}


def test_under_the_scheduler_a_failing_step_fails_its_row_and_the_call() -> None:
    totals = scheduled(FailingSteps)
    call, login, browse = (totals.ops[n] for n in ("FailingSteps", "login", "browse"))
    assert call.fail > 10
    assert login.ok == call.ok + call.fail  # every call logged in first
    assert (browse.ok, browse.fail) == (call.ok, call.fail)
    assert totals.errors == {("browse", "LookupError", "no such page"): call.fail,
                             ("FailingSteps", "LookupError", "no such page"): call.fail}


# -- end to end ---------------------------------------------------------------------------
SHOP_CLIENT = '''
from protocol import ClientProtocol
from protocol.http import HttpClient


class Shop(ClientProtocol):
    fail_every = 0

    @staticmethod
    def global_init(custom_conf=None):
        Shop.fail_every = int(custom_conf.get("fail_every", 0))

    def init_before_use(self, host):
        self._http = HttpClient(host)
        self._calls = 0

    async def execute(self):
        self._calls += 1
        async with self.step("login"):
            (await self._http.get("/test/login")).raise_for_status()
        async with self.step("browse"):
            (await self._http.get("/test/browse")).raise_for_status()
        async with self.step("pay"):
            if self.fail_every and self._calls % self.fail_every == 0:
                raise RuntimeError("card declined")

    async def shutdown(self):
        await self._http.close()
'''


def operations(rows: list[str]) -> dict[str, tuple[int, int]]:
    """The final block's operations table: name -> (success, fail)."""
    out = {}
    for line in rows:
        name, *rest = line.split()
        if rest[0] == "(step)":
            rest = rest[1:]
        out[name] = (int(rest[0]), int(rest[1]))
    return out


@pytest.mark.parametrize("fail_every", [0, 4])
def test_steps_have_their_own_rows_live_final_and_in_the_result_file(
        tmp_path: Path, tag: str, target: Target, fail_every: int) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 6, "hatch_rate": 100,
                                "run_time": 2, "worker": 2, "fail_every": fail_every},
                     client=SHOP_CLIENT, client_path="shop.py")
    out = tmp_path / "result.json"
    r = run_master(tmp_path, conf, tag, "--out", str(out), "--csv", str(tmp_path / "st"),
                   timeout=60)
    assert r.code == 0, r.stderr
    served = target.counts()
    doc = load_result(out)
    names = doc["totals"]["names"]
    rows = {name: (st["ok"], st["fail"]) for name, st in names.items()}
    assert set(rows) == {"Shop", "login", "browse", "pay"}
    ok, fail = rows["Shop"]
    assert ok > 50
    # every call logged in and browsed; pay failed (and so the call) every fail_every-th
    assert rows["login"] == rows["browse"] == (ok + fail, 0)
    assert rows["pay"] == (ok, fail)
    assert served["ok"] == 2 * (ok + fail) and served["fail"] == 0
    errors = {(e["name"], e["type"], e["message"]): e["count"] for e in doc["errors"]}
    if fail_every:
        # each of the 6 clients failed every fail_every-th of its calls
        assert 0 < (ok + fail - 6 * (fail_every - 1)) / fail_every <= fail
        assert fail <= (ok + fail) / fail_every
        assert errors == {("pay", "RuntimeError", "card declined"): fail,
                          ("Shop", "RuntimeError", "card declined"): fail}
    else:
        assert fail == 0 and errors == {}
    for name in ("login", "browse"):
        st = names[name]
        assert 0 < st["min_ns"] <= st["p50_ns"] <= st["max_ns"]
        assert st["statuses"] == {}  # the responses count under the call's row
    assert names["Shop"]["statuses"] == {"200": served["ok"]}
    # the live deltas carried the rows too: the series holds them second by second
    series = doc["series"]["names"]
    assert {name: (sum(s["ok"]), sum(s["fail"])) for name, s in series.items()} == rows
    # the console's final block: a row per name, the same counts, steps marked
    assert operations(r.section("operations:")) == rows
    assert sum("(step)" in line for line in r.section("operations:")) == 3
    # the figures over every name are the calls': a step is a part of a call
    total = doc["totals"]["all"]
    assert (total["ok"], total["fail"]) == (ok, fail), total
    assert (r.final_int("success count"), r.final_int("fail count")) == (ok, fail)
    assert [names[n]["step"] for n in ("Shop", "login", "browse", "pay")] == \
        [False, True, True, True]
    assert (sum(doc["series"]["ok"]), sum(doc["series"]["fail"])) == (ok, fail)
    assert {name for name, s in series.items() if s["step"]} == {"login", "browse", "pay"}
    # the CSV history's Aggregated rows are the calls' too: the last one is Shop's
    with (tmp_path / "st_stats_history.csv").open() as f:
        history = list(csv.DictReader(f))
    last = {row["Name"]: row for row in history if row["Timestamp"] == history[-1]["Timestamp"]}
    keys = ("Total Request Count", "Total Median Response Time", "Total Max Response Time")
    assert [last["Aggregated"][k] for k in keys] == [last["Shop"][k] for k in keys]
    assert int(last["Aggregated"]["Total Request Count"]) == ok + fail
    if fail_every:
        table = " ".join(r.section("errors:"))
        assert "pay" in table and "card declined" in table
