"""Thresholds (``thresholds:``): the rules' forms and errors, and real runs judged by
them: exit 0 when every rule passes, 6 when one fails, a sliding window catching what
the whole run averages away, the verdicts in the final block and the result file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from loadmaster.config import ConfigError
from loadmaster.config_values import parse_duration
from loadmaster.thresholds import parse_thresholds
from protocol.exitcodes import ExitCode, first
from tests.e2e_helpers import Result, Target, run_master, write_job
from tests.test_config import SEED, load
from tests.test_reports_e2e import cli
from tests.test_result_file import load_result


@pytest.mark.parametrize(("text", "metric", "op", "limit"), [
    ("p99 < 250ms", "p99", "<", 250e6),
    ("p99.9<=2s", "p99.9", "<=", 2e9),
    ("avg < 800us", "avg", "<", 800e3),
    ("max < 1.5s", "max", "<", 1.5e9),
    ("fail_ratio < 1%", "fail_ratio", "<", 0.01),
    ("fail_ratio <= 0.05", "fail_ratio", "<=", 0.05),
    ("rps >= 100", "rps", ">=", 100.0),
    ("rps > 2.5/s", "rps", ">", 2.5),
    ("dropped < 1", "dropped", "<", 1.0),
    ("late <= 10", "late", "<=", 10.0),
])
def test_a_rule_reads_metric_op_and_limit_in_the_metrics_unit(
        text: str, metric: str, op: str, limit: float) -> None:
    (rule,) = parse_thresholds([text], parse_duration)
    assert (rule.metric, rule.op, rule.limit, rule.name, rule.over) == (
        metric, op, pytest.approx(limit), None, None)


def test_abort_on_fail_and_its_delay() -> None:
    rule, plain = parse_thresholds([{"rule": "p99 < 1s", "abort_on_fail": True,
                                     "delay_abort": "10s"}, "p99 < 1s"], parse_duration)
    assert (rule.abort_on_fail, rule.delay_abort) == (True, 10.0)
    assert (plain.abort_on_fail, plain.delay_abort) == (False, 0.0)


def test_a_rule_may_name_a_name_and_a_window() -> None:
    (rule,) = parse_thresholds([{"rule": "p95 < 100ms", "name": "login", "over": "30s"}],
                               parse_duration)
    assert (rule.name, rule.over, rule.shown()) == ("login", 30.0, "p95 < 100ms over 30s")


@pytest.mark.parametrize(("value", "says"), [
    ([], "expected a list of rules"),
    ("p99 < 1s", "expected a list of rules"),
    (["p99 < 250"], "thresholds[0] 'p99 < 250': a latency's limit takes a unit"),
    (["p99 250ms"], "expected METRIC OP LIMIT"),
    (["p98.5x < 1ms"], "expected METRIC OP LIMIT"),
    (["median < 1ms"], "unknown metric 'median'"),
    (["p99 < fast"], "the limit 'fast' is not a number"),
    (["fail_ratio < 5"], "a percentage (\"1%\") or a ratio from 0 to 1"),
    (["rps > 5ms"], "rps's limit is a plain number"),
    (["dropped < 1%"], "dropped's limit is a plain number"),
    ([5], "a rule is a string"),
    ([{"name": "x"}], "expected {rule: TEXT"),
    ([{"rule": "p99 < 1s", "when": 1}], "expected {rule: TEXT"),
    ([{"rule": "p99 < 1s", "over": "0.5s"}], "over: at least 1s"),
    ([{"rule": "p99 < 1s", "over": "soon"}], "over: expected a duration"),
    ([{"rule": "p99 < 1s", "name": ""}], "name: expected a name"),
    ([{"rule": "p99 < 1s", "abort_on_fail": "yes"}], "abort_on_fail: expected true or false"),
    ([{"rule": "p99 < 1s", "delay_abort": "5s"}], "delay_abort means nothing without"),
    ([{"rule": "p99 < 1s", "abort_on_fail": True, "delay_abort": "-1s"}],
     "delay_abort: expected a duration >= 0"),
])
def test_a_bad_rule_is_refused_naming_it(value: Any, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_thresholds(value, parse_duration)
    assert says in str(info.value)


def test_the_config_names_the_key_the_rule_and_what_is_wrong(base: Path) -> None:
    def fails(extra: str) -> str:
        with pytest.raises(ConfigError) as info:
            load(base, SEED + extra)
        return str(info.value)

    at = f"{base / 'conf.yml'}: key 'thresholds': "
    (base / "client.py").write_text(
        "class Shop:\n    name = 'store'\n    async def execute(self):\n"
        "        async with self.step('login'):\n            pass\n")
    assert fails('thresholds: ["p99 < 250"]').startswith(at + "thresholds[0] 'p99 < 250'")
    assert fails('thresholds: [{rule: "p99 < 1s", over: 31s}]') == (
        f"{at}thresholds[0] 'p99 < 1s': over 31s is longer than the run (30s)")
    assert fails('thresholds: [{rule: "p99 < 1s", name: logout}]') == (
        f"{at}thresholds[0] 'p99 < 1s': name 'logout' is not a name client.py counts calls "
        f"under (its classes and steps: Shop, login, store)")
    cfg = load(base, SEED + 'thresholds: [{rule: "p99 < 1s", name: login, over: 30s}, '
                            '{rule: "rps > 1", name: store}]\n')
    assert [r.name for r in cfg.thresholds] == ["login", "store"]


def test_an_agent_lost_wins_over_a_threshold_which_wins_over_saturation() -> None:
    assert first({ExitCode.THRESHOLD_FAILED, ExitCode.AGENT_LOST}) == ExitCode.AGENT_LOST
    assert first({ExitCode.THRESHOLD_FAILED, ExitCode.SATURATED}) == \
        ExitCode.THRESHOLD_FAILED
    assert first({ExitCode.THRESHOLD_FAILED, ExitCode.INTERRUPTED}) == ExitCode.INTERRUPTED


# -- real runs ----------------------------------------------------------------------------
# Every call of the run's third second takes 300 ms more; the others are quick (4 clients
# waiting 50 ms after each call)
STALLING_CLIENT = '''
import asyncio
import time
from protocol import ClientProtocol
from protocol.http import HttpClient

START = []


class Stall(ClientProtocol):
    def init_before_use(self, host):
        self._http = HttpClient(host)

    async def execute(self):
        if not START:
            START.append(time.monotonic())
        if 2.0 <= time.monotonic() - START[0] < 3.0:
            await asyncio.sleep(0.3)
        (await self._http.get()).raise_for_status()

    async def shutdown(self):
        await self._http.close()
'''


def judged(tmp_path: Path, tag: str, target: Target, rules: list[Any],
           run_time: float = 6) -> tuple[Result, dict[str, Any]]:
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "hatch_rate": 100,
                                "run_time": run_time, "worker": 2, "wait_time": 0.05,
                                "print_interval": 1, "thresholds": rules},
                     client=STALLING_CLIENT, client_path="stall.py")
    out = tmp_path / "result.json"
    r = run_master(tmp_path, conf, tag, "--out", str(out), timeout=60)
    return r, load_result(out)


def table(r: Result) -> dict[str, str]:
    """The final block's thresholds table: rule (as shown) -> pass or FAIL."""
    lines = r.stdout[r.stdout.rindex("\nthresholds: "):].splitlines()[3:]
    return {line[9:41].strip(): line[2:8].strip() for line in lines if line.startswith("  ")}


def test_rules_that_hold_exit_0_and_show_their_figures(
        tmp_path: Path, tag: str, target: Target) -> None:
    r, doc = judged(tmp_path, tag, target, ["p50 < 250ms", "fail_ratio < 1%", "rps > 20",
                                            {"rule": "p99 < 1s", "over": "2s"}])
    assert r.code == 0, (r.stdout[-2000:], r.stderr)
    assert "thresholds: 4 passed, 0 failed" in r.stdout
    assert table(r) == {"p50 < 250ms": "pass", "fail_ratio < 1%": "pass",
                        "rps > 20": "pass", "p99 < 1s over 2s": "pass"}
    verdicts = doc["thresholds"]
    assert [v["passed"] for v in verdicts] == [True] * 4
    assert verdicts[1]["value"] == 0.0  # no call failed
    assert verdicts[2]["value"] == pytest.approx(doc["totals"]["all"]["rps"])
    assert doc["exit_code"] == 0


def test_a_window_fails_what_the_whole_run_averages_away_and_exits_6(
        tmp_path: Path, tag: str, target: Target) -> None:
    # about 70 calls a second, 13 of them stalled in the third: 15% of a window that
    # holds them, 3-4% of the run
    r, doc = judged(tmp_path, tag, target, ["p90 < 100ms",
                                            {"rule": "p90 < 100ms", "over": "2s"},
                                            {"rule": "p90 < 100ms", "name": "Stall"}])
    assert r.code == ExitCode.THRESHOLD_FAILED, (r.stdout[-2000:], r.stderr)
    assert "thresholds: 2 passed, 1 failed (exit 6)" in r.stdout
    assert table(r) == {"p90 < 100ms": "pass", "p90 < 100ms over 2s": "FAIL"}
    whole, window, named = doc["thresholds"]
    assert whole["passed"] and named["passed"] and not window["passed"]
    assert window["value"] >= 300e6  # the stalled calls, in the window that holds them
    assert window["where"] in ("seconds 2-3", "seconds 3-4")
    assert whole["value"] < 100e6 and whole["value"] == named["value"]
    assert doc["exit_code"] == 6
    # the report of the result file shows the same verdicts: as text, and in the page
    again = cli("report", str(tmp_path / "result.json"), "--html", "page.html", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    section = r.stdout[r.stdout.rindex("\nthresholds: "):]
    assert section.strip() and again.stdout.rstrip().endswith(section.rstrip()), again.stdout
    page = (tmp_path / "page.html").read_text()
    rows = re.findall(r"<tr><td class=\"(good|bad)\">(pass|FAIL)</td><td>([^<]+)</td>"
                      r"<td>([^<]+)</td><td class=\"num\">([^<]+)</td></tr>", page)
    assert [(v, rule, name) for _, v, rule, name, _ in rows] == [
        ("pass", "p90 &lt; 100ms", "all"), ("FAIL", "p90 &lt; 100ms over 2s", "all"),
        ("pass", "p90 &lt; 100ms", "Stall")], rows
    assert re.search(r'id="thresholds-summary" class="bad">2 passed, 1 failed \(exit 6\)',
                     page)


def test_abort_on_fail_stops_the_run_once_its_rule_fails_after_delay_abort(
        tmp_path: Path, tag: str) -> None:
    """A target failing one request in five: the windowed fail_ratio rule fails from the
    first window on, but is not judged for the abort before 3 s; the run of 30 s stops
    soon after, exit 6, saying why."""
    target = Target(tag, fail_every=5)
    try:
        r, doc = judged(tmp_path, tag, target, [
            "p99 < 1s", {"rule": "fail_ratio < 1%", "over": "2s", "abort_on_fail": True,
                         "delay_abort": "3s"}], run_time=30)
    finally:
        target.stop()
    assert r.code == ExitCode.THRESHOLD_FAILED, (r.stdout[-2000:], r.stderr)
    assert re.search(r"threshold 'fail_ratio < 1% over 2s' failed \(abort_on_fail\): "
                     r"(19|20|21)\.\d\d% \(seconds \d+-\d+\)", r.stdout), r.stdout[-3000:]
    assert "stopped early: threshold 'fail_ratio < 1% over 2s' of all names failed live" \
        in r.stdout
    assert 3 <= r.final_float("run time") < 10, r.final()
    assert table(r) == {"p99 < 1s": "pass", "fail_ratio < 1% over 2s": "FAIL"}
    assert doc["thresholds"][1]["value"] == pytest.approx(0.2, abs=0.02)
    live = [line for line in r.stdout.splitlines() if line.startswith("thresholds ")]
    assert live and "1 failing: fail_ratio < 1% over 2s" in live[-1], live


def test_a_window_with_no_call_is_not_judged(tmp_path: Path, tag: str,
                                             target: Target) -> None:
    """Stages ramping down to 0 clients leave the last seconds without a success: a
    windowed latency rule judges the windows that have one, and passes."""
    conf = write_job(tmp_path, {"host": target.url, "worker": 2, "wait_time": 0.05,
                                "stages": [{"duration": 2, "users": 4},
                                           {"duration": 2, "users": 0},
                                           {"duration": 2, "users": 0}],
                                "thresholds": [{"rule": "p99 < 1s", "over": "1s"}]},
                     client=STALLING_CLIENT, client_path="stall.py")
    out = tmp_path / "result.json"
    r = run_master(tmp_path, conf, tag, "--out", str(out), timeout=60)
    assert r.code == 0, (r.stdout[-2000:], r.stderr)
    doc = load_result(out)
    assert doc["series"]["ok"][-2:] == [0, 0]  # seconds with no call, not judged
    (verdict,) = doc["thresholds"]
    assert verdict["passed"] and verdict["value"] < 1e9



@pytest.mark.parametrize(("text", "says"), [
    ("generator: {max_cpu: 120%}", "max_cpu: expected a share of one core, 1% to 100%"),
    ("generator: {max_cpu: lots}", "max_cpu: expected a share of one core"),
    ("generator: {max_loop_lag: -1ms}", "max_loop_lag: expected a duration > 0"),
    ("generator: {max_behind_schedule: 0s}", "max_behind_schedule: expected a duration > 0"),
    ("generator: {max_behind_schedule: soon}", "max_behind_schedule: "),
    ("generator: {for: 0}", "for: expected a duration > 0"),
    ("generator: {for: 1.5s}", "for: whole seconds"),
    ("generator: {on_saturation: panic}", "on_saturation: expected warn (flag it) or fail"),
    ("generator: {max_cpus: 90%}", "expected {max_cpu: 90%, max_loop_lag: 20ms"),
    ("generator: fail", "expected {max_cpu: 90%"),
])
def test_a_bad_generator_rule_names_the_key(base: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(base, SEED + text + "\n")
    assert str(info.value).startswith(f"{base / 'conf.yml'}: key 'generator': {says}"), \
        str(info.value)


def test_a_generator_rule_reads_percentages_durations_and_its_action(base: Path) -> None:
    cfg = load(base, SEED + "generator: {max_cpu: 75%, max_loop_lag: 50ms, for: 5s, "
                            "max_behind_schedule: 1.5s, on_saturation: fail}\n")
    rule = cfg.generator
    assert (rule.max_cpu, rule.max_loop_lag, rule.max_behind_schedule, rule.seconds,
            rule.fail) == (0.75, 0.05, 1.5, 5, True)
    default = load(base, SEED).generator
    assert (default.max_cpu, default.max_loop_lag, default.max_behind_schedule,
            default.seconds, default.fail) == (0.9, 0.02, 0.1, 3, False)
