"""Thresholds: the rules a run is judged by (``thresholds:``); one failed is exit 6.

A rule reads ``<metric> <op> <limit>``: ``p99 < 250ms``, ``fail_ratio < 1%``,
``rps >= 100``. Metrics: the latencies ``p50 p90 p95 p99 p99.9 max min avg`` (a limit
with its unit: ``us``, ``ms`` or ``s``), ``fail_ratio`` (a percentage, or a ratio from 0
to 1), ``rps`` (successes a second), ``dropped`` and ``late`` (the open model's calls).
A rule is over every name (calls, not named steps) or over one ``name``, over the whole
run (judged on the final totals, exact) or, with ``over: 30s``, over every window of
that many seconds of the per-second series (judged on each; the worst is shown).

The master judges the rules live, each second (``judge_live``: a rule with
``abort_on_fail`` that fails then stops the run, once ``delay_abort`` seconds of it have
passed), and once the final block is built (``judge``: the verdicts and exit 6); at the
end an undefined figure (a latency with no success, a ratio with no call) fails its
rule, and a window without the figure is not judged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from loadmaster.series import Merged, Series
from protocol.histogram import bucket_value
from protocol.stats import OpStats, Totals

__all__ = ["LATENCIES", "METRICS", "Rule", "Verdict", "judge", "judge_live",
           "parse_thresholds", "shown_rows", "verdicts_of"]

# latency metric -> its quantile (None: not a quantile)
LATENCIES: dict[str, float | None] = {
    "p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.9": 0.999,
    "max": None, "min": None, "avg": None,
}
METRICS = (*LATENCIES, "fail_ratio", "rps", "dropped", "late")
_OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__}
_RULE = re.compile(r"^\s*([a-z_]+(?:\.\d+)?|p\d+(?:\.\d+)?)\s*(<=|>=|<|>)\s*(\S+?)\s*$")
_NUMBER = re.compile(r"^([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)(.*)$")
_TIME_UNITS = {"us": 1e3, "ms": 1e6, "s": 1e9}
RULE_KEYS = ("rule", "name", "over", "abort_on_fail", "delay_abort")


@dataclass(frozen=True)
class Rule:
    text: str  # the rule as written
    metric: str
    op: str
    limit: float  # ns for a latency, a ratio for fail_ratio, a rate, or a count
    name: str | None = None  # None: every name (calls, not steps)
    over: float | None = None  # seconds of a sliding window; None: the whole run
    abort_on_fail: bool = False  # a failure judged live stops the run
    delay_abort: float = 0.0  # not judged for that before this many seconds of the run

    def shown(self) -> str:
        """The rule as the tables show it: the text, and its window."""
        return self.text if self.over is None else f"{self.text} over {self.over:g}s"


@dataclass(frozen=True)
class Verdict:
    rule: Rule
    passed: bool
    value: float | None  # the measured figure (the worst window's); None: undefined
    where: str = ""  # which window, when the rule has one

    def measured(self) -> str:
        """The figure as the tables show it."""
        if self.value is None:
            return "-"
        m = self.rule.metric
        if m in LATENCIES:
            ms = self.value / 1e6
            text = f"{ms:.3f} ms" if ms < 10 else f"{ms:.1f} ms"
        elif m == "fail_ratio":
            text = f"{100 * self.value:.2f}%"
        elif m == "rps":
            text = f"{self.value:.2f}/s"
        else:
            text = f"{self.value:.0f}"
        return f"{text} ({self.where})" if self.where else text


def shown_rows(rules: Sequence[Rule], verdicts: Sequence[Verdict | None]) -> list[dict[str, Any]]:
    """The rules and their verdicts as the dashboard shows them: a row each, with its
    state (``pass``, ``fail``, or ``waiting`` while live with no figure yet)."""
    rows = []
    for rule, v in zip(rules, verdicts, strict=True):
        rows.append({"rule": rule.shown(), "name": rule.name or "all",
                     "state": "waiting" if v is None else "pass" if v.passed else "fail",
                     "measured": "-" if v is None else v.measured(),
                     "abort_on_fail": rule.abort_on_fail})
    return rows


def verdicts_of(items: Sequence[Any]) -> list[Verdict]:
    """The verdicts a result file holds (``thresholds``), each rule parsed again from its
    text; ValueError naming the one that does not parse."""
    out = []
    for i, item in enumerate(items):
        rule = _rule(f"thresholds[{i}] {item['rule']!r}", item["rule"], item["name"],
                     item["over_s"])
        out.append(Verdict(rule, item["passed"], item["value"], item["where"] or ""))
    return out


def parse_thresholds(value: Any, parse_duration: Any) -> list[Rule]:
    """``thresholds:``: a list of rules, each a string or ``{rule, name, over,
    abort_on_fail, delay_abort}``;
    ValueError naming the rule (``thresholds[1] 'p99 < 250'``) and what is accepted."""
    if not isinstance(value, list) or not value:
        raise ValueError('expected a list of rules such as "p99 < 250ms" or {rule: '
                         '"p95 < 100ms", name: login, over: 30s}')
    rules = []
    for i, item in enumerate(value):
        where = f"thresholds[{i}]"
        if isinstance(item, dict):
            unknown = sorted(set(map(str, item)) - set(RULE_KEYS))
            if unknown or "rule" not in item:
                raise ValueError(f"{where}: expected {{rule: TEXT, name: NAME, over: "
                                 f"DURATION, abort_on_fail: BOOL, delay_abort: DURATION}}, "
                                 f"rule required (got the keys {sorted(map(str, item))})")
            text, name, over = item["rule"], item.get("name"), item.get("over")
            abort, delay = item.get("abort_on_fail", False), item.get("delay_abort", 0)
            if not isinstance(abort, bool):
                raise ValueError(f"{where}: abort_on_fail: expected true or false")
        else:
            text, name, over, abort, delay = item, None, None, False, 0
        if not isinstance(text, str):
            raise ValueError(f"{where}: a rule is a string such as \"p99 < 250ms\"")
        where = f"{where} {text!r}"
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"{where}: name: expected a name the run counts calls under")
        seconds = None
        if over is not None:
            try:
                seconds = parse_duration(over)
            except ValueError as e:
                raise ValueError(f"{where}: over: {e}") from None
            if not seconds >= 1:
                raise ValueError(f"{where}: over: at least 1s (the series has a figure a "
                                 f"second)")
        try:
            delay_s = parse_duration(delay)
        except ValueError as e:
            raise ValueError(f"{where}: delay_abort: {e}") from None
        if delay_s and not abort:
            raise ValueError(f"{where}: delay_abort means nothing without abort_on_fail: "
                             f"true")
        rules.append(replace(_rule(where, text, name, seconds), abort_on_fail=abort,
                             delay_abort=delay_s))
    return rules


def _rule(where: str, text: str, name: str | None, over: float | None) -> Rule:
    m = _RULE.match(text)
    if m is None:
        raise ValueError(f"{where}: expected METRIC OP LIMIT, such as \"p99 < 250ms\" or "
                         f"\"fail_ratio < 1%\" (OP: <, <=, > or >=)")
    metric, op, raw = m.groups()
    if metric not in METRICS:
        raise ValueError(f"{where}: unknown metric {metric!r}; one of {', '.join(METRICS)}")
    n = _NUMBER.match(raw)
    if n is None:
        raise ValueError(f"{where}: the limit {raw!r} is not a number")
    number, unit = float(n.group(1)), n.group(2)
    if metric in LATENCIES:
        if unit not in _TIME_UNITS:
            raise ValueError(f"{where}: a latency's limit takes a unit: us, ms or s "
                             f"(\"{metric} {op} {n.group(1)}ms\")")
        limit = number * _TIME_UNITS[unit]
    elif metric == "fail_ratio":
        if unit == "%":
            limit = number / 100
        elif not unit and number <= 1:
            limit = number
        else:
            raise ValueError(f"{where}: fail_ratio's limit is a percentage (\"1%\") or a "
                             f"ratio from 0 to 1")
    elif unit not in ("", "/s") if metric == "rps" else unit:
        raise ValueError(f"{where}: {metric}'s limit is a plain number")
    else:
        limit = number
    if not math.isfinite(limit):
        raise ValueError(f"{where}: the limit is not finite")
    return Rule(text.strip(), metric, op, limit, name, over)


def judge(rules: Sequence[Rule], totals: Totals, run_time: float,
          series: Series | None) -> list[Verdict]:
    """Each rule's verdict: whole-run rules on the final totals, windowed ones on every
    complete window of the per-second series."""
    out = []
    combined = _combined(rules, totals)
    for rule in rules:
        if rule.over is None:
            st = combined if rule.name is None else totals.ops.get(rule.name)
            value = None if st is None else _of_totals(rule.metric, st, run_time)
            out.append(_verdict(rule, value))
        else:
            out.append(_windowed(rule, series))
    return out


def judge_live(rules: Sequence[Rule], totals: Totals, series: Series,
               covered: int) -> list[Verdict | None]:
    """Each rule judged on the complete seconds so far (``covered``): a whole-run rule on
    the live totals, a windowed one on the latest window; None while it has no figure
    (no success yet, a window not complete). (Live totals miss what lost deltas held:
    the end judges the finals.)"""
    out: list[Verdict | None] = []
    combined = _combined(rules, totals)
    for rule in rules:
        if rule.over is None:
            st = combined if rule.name is None else totals.ops.get(rule.name)
            value = None if st is None else _of_totals(rule.metric, st, float(covered))
            out.append(None if value is None else _verdict(rule, value))  # (no figure yet)
            continue
        k = math.ceil(rule.over)
        if covered < k:
            out.append(None)
            continue
        merged = Series.merged(series.window(covered - k + 1, covered), rule.name)
        value = _of_window(rule.metric, merged, k)
        out.append(None if value is None else _verdict(
            rule, value, f"seconds {covered - k + 1}-{covered}"))
    return out


def _combined(rules: Sequence[Rule], totals: Totals) -> OpStats | None:
    """Every name merged, once, when a whole-run rule judges them all."""
    if any(rule.name is None and rule.over is None for rule in rules):
        return totals.combined()
    return None


def _verdict(rule: Rule, value: float | None, where: str = "") -> Verdict:
    passed = value is not None and _OPS[rule.op](float(value), rule.limit)
    return Verdict(rule, passed, value, where)


def _of_totals(metric: str, st: OpStats, run_time: float) -> float | None:
    q = LATENCIES.get(metric)
    if q is not None:
        return _float(st.percentile(q))
    if metric == "avg":
        return st.mean_ns
    if metric == "min":
        return _float(st.min_value)
    if metric == "max":
        return float(st.max_ns) if st.ok else None
    if metric == "fail_ratio":
        calls = st.ok + st.fail
        return st.fail / calls if calls else None
    if metric == "rps":
        return st.ok / run_time if run_time > 0 else None
    return float(st.dropped if metric == "dropped" else st.late)


def _float(v: int | None) -> float | None:
    return None if v is None else float(v)


def _of_window(metric: str, m: Merged, seconds: int) -> float | None:
    q = LATENCIES.get(metric)
    if q is not None:
        return _float(m.hist.percentile(q))
    if metric in ("avg", "min", "max"):
        if metric == "avg":  # (bucket midpoints: the series keeps no sums)
            indexes, counts = m.hist.packed()
            total = int(counts.sum())
            return sum(bucket_value(int(i)) * int(c)
                       for i, c in zip(indexes, counts, strict=True)) / total if total else None
        return _float(m.hist.percentile(1e-12 if metric == "min" else 1.0))
    if metric == "fail_ratio":
        calls = m.ok + m.fail
        return m.fail / calls if calls else None
    if metric == "rps":
        return m.ok / seconds
    return float(m.dropped if metric == "dropped" else m.late)


def _windowed(rule: Rule, series: Series | None) -> Verdict:
    """The rule over every window of ``over`` seconds (whole seconds, rounded up) of the
    series; the first failing window's verdict, else the worst passing one's. A window
    without the figure (no success in it, for a latency: a ramp down to 0 clients, say)
    is not judged; a rule no window could judge fails."""
    assert rule.over is not None
    k = math.ceil(rule.over)
    last = 0 if series is None else series.latest
    if series is None or last < k:
        return Verdict(rule, False, None, f"the run had {last} s of figures, under {k} s")
    worst: Verdict | None = None
    for first in range(1, last - k + 2):
        merged = Series.merged(series.window(first, first + k - 1), rule.name)
        value = _of_window(rule.metric, merged, k)
        if value is None:
            continue
        v = _verdict(rule, value, f"seconds {first}-{first + k - 1}")
        if not v.passed:
            return v
        if worst is None or _worse(rule, v, worst):
            worst = v
    if worst is None:
        return Verdict(rule, False, None, "no window had the figure")
    return worst


def _worse(rule: Rule, a: Verdict, b: Verdict) -> bool:
    """Whether ``a``'s figure is nearer the limit than ``b``'s."""
    if a.value is None or b.value is None:
        return a.value is None
    return a.value > b.value if rule.op in ("<", "<=") else a.value < b.value
