"""The checks of config values: each takes what YAML or the command line gave and returns
the value the run uses, or raises ValueError saying what is accepted."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from protocol.wire.messages import MAX_CLASSES, MAX_STAGES

__all__ = [
    "DURATION_FORMS",
    "GeneratorRule",
    "Stage",
    "WaitTime",
    "arrival_process",
    "benchmark_classes",
    "boolean",
    "duration_seconds",
    "generator",
    "iteration_count",
    "non_empty_str",
    "non_negative_int",
    "parse_duration",
    "path_list",
    "positive_duration",
    "positive_int",
    "positive_number",
    "stages",
    "string",
    "wait_time",
    "worker_count",
]

MAX_RUN_TIME = 366 * 86400.0  # the stages' total duration, at most
MAX_ITERATIONS = 10**15  # calls a run may be limited to, at most

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
DURATION_FORMS = 'a duration such as 90, 1.5, "90s", "2m", "1h30m" or "250ms"'


def duration_seconds(value: Any) -> float:
    """Seconds from a duration's form, possibly negative; ValueError naming the forms."""
    bad = ValueError(f"expected {DURATION_FORMS}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range
            seconds = math.inf
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.removeprefix("-")
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
            for m in _DURATION.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * unit[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                raise bad from None
        seconds *= sign
    else:
        raise bad
    if not math.isfinite(seconds):
        raise bad
    return seconds


def parse_duration(value: Any) -> float:
    """Seconds from 90, 1.5, "90", "90s", "2m", "1h30m" or "250ms"; ValueError otherwise.

    The ValueError's text says what is accepted ("expected a duration such as ...",
    "expected a duration >= 0").
    """
    seconds = duration_seconds(value)
    if seconds < 0:
        raise ValueError("expected a duration >= 0")
    return seconds


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def iteration_count(value: Any) -> int:
    n = positive_int(value)
    if n > MAX_ITERATIONS:
        raise ValueError(f"expected at most {MAX_ITERATIONS:,} calls")
    return n


def non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number of at least 0")
    return value


def positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or not value <= sys.float_info.max:  # inf, nan, and ints float() cannot hold
        raise ValueError("expected a number above 0")
    return float(value)


def positive_duration(value: Any) -> float:
    seconds = duration_seconds(value)
    if not seconds > 0:
        raise ValueError("expected a duration > 0")
    return seconds


def non_empty_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def worker_count(value: Any) -> int | None:
    if value == "auto" or value is None:
        return None
    try:
        return positive_int(value)
    except ValueError:
        raise ValueError("expected `auto` or a whole number of at least 1") from None


def path_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of file or folder paths")
    return list(value)


def arrival_process(value: Any) -> str:
    if value not in ("uniform", "poisson"):
        raise ValueError("expected uniform (evenly spaced) or poisson (random, as users "
                         "arrive independently)")
    return str(value)


SECURITY_KEYS = ("key", "authorized_agents")


def security(value: Any) -> dict[str, str]:
    """``{key: DIR, authorized_agents: DIR}``: both folders, nothing else."""
    expected = "expected {key: FOLDER, authorized_agents: FOLDER} (folders made by keygen)"
    if not isinstance(value, dict) or set(value) != set(SECURITY_KEYS) or not all(
            isinstance(v, str) and v.strip() for v in value.values()):
        raise ValueError(expected)
    return {k: str(value[k]).strip() for k in SECURITY_KEYS}


@dataclass(frozen=True)
class WaitTime:
    """What a closed-model client does between calls: sleep a time drawn uniformly from
    [low, high] after each call (low == high: the seed's constant wait), or, with
    ``pacing``, start each call ``pacing`` seconds after the last one started (at once
    when the call took longer). ``shown`` is the form as YAML writes it."""

    low: float = 0.0
    high: float = 0.0
    pacing: float = 0.0
    shown: Any = 0

    @property
    def none(self) -> bool:
        return not (self.high or self.pacing)


WAIT_FORMS = ("expected a duration (sleep after each call), [min, max] (a uniform draw), "
              "{pacing: DURATION} (start to start) or {throughput: N} (calls a second per "
              "client)")


def wait_time(value: Any) -> WaitTime:
    """A number or duration, ``[min, max]``, ``{pacing: S}`` or ``{throughput: N}``."""
    if isinstance(value, WaitTime):
        return value
    if isinstance(value, list):
        if len(value) != 2:
            raise ValueError(WAIT_FORMS)
        try:
            low, high = (parse_duration(v) for v in value)
        except ValueError as e:
            raise ValueError(f"[min, max]: {e}") from None
        if low > high:
            raise ValueError(f"[min, max] with min over max ({low:g}s > {high:g}s): write "
                             f"[{high:g}, {low:g}]")
        return WaitTime(low, high, shown=list(value))
    if isinstance(value, dict):
        if list(value) == ["pacing"]:
            try:
                pacing = positive_duration(value["pacing"])
            except ValueError as e:
                raise ValueError(f"pacing: {e}") from None
            return WaitTime(pacing=pacing, shown=dict(value))
        if list(value) == ["throughput"]:
            try:
                rate = positive_number(value["throughput"])
            except ValueError as e:
                raise ValueError(f"throughput: {e} (calls a second, per client)") from None
            return WaitTime(pacing=1.0 / rate, shown=dict(value))
        raise ValueError(WAIT_FORMS)
    if not isinstance(value, int | float | str) or isinstance(value, bool):
        raise ValueError(WAIT_FORMS)
    seconds = parse_duration(value)  # (its error says which durations are accepted)
    return WaitTime(seconds, seconds, shown=value)


@dataclass(frozen=True)
class Stage:
    """One stage: over ``duration`` seconds the target goes linearly from the last
    stage's (0 at the start) to ``target``: clients (``users``) or an ``arrival_rate``."""

    duration: float
    target: float


STAGE_FORM = "{duration: DURATION, users: N} or {duration: DURATION, arrival_rate: N}"


def stages(value: Any) -> tuple[str, list[Stage]]:
    """A non-empty list of stages, all of users or all of arrival_rate: which, and them."""
    if isinstance(value, tuple):
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a list of stages, each {STAGE_FORM}")
    kind = ""
    out = []
    for i, item in enumerate(value):
        where = f"stages[{i}]"
        if not isinstance(item, dict) or "duration" not in item or not (
                set(item) - {"duration"}) or len(item) != 2:
            raise ValueError(f"{where}: expected {STAGE_FORM}")
        (key,) = set(item) - {"duration"}
        if key not in ("users", "arrival_rate"):
            raise ValueError(f"{where}: {key!r} is not a stage's target; expected {STAGE_FORM}")
        if kind and key != kind:
            raise ValueError(f"{where}: {key} where the first stage has {kind}: the stages "
                             f"of a run are all of users (the closed model) or all of "
                             f"arrival_rate (the open model)")
        kind = key
        try:
            duration = parse_duration(item["duration"])
        except ValueError as e:
            raise ValueError(f"{where}.duration: {e}") from None
        target = item[key]
        try:
            if key == "users":
                target = non_negative_int(target)
            elif not (type(target) in (int, float) and target == 0):
                target = positive_number(target)
        except ValueError as e:
            raise ValueError(f"{where}.{key}: {e}{'' if key == 'users' else ', or 0'}") \
                from None
        out.append(Stage(duration, target))
    if len(out) > MAX_STAGES:
        raise ValueError(f"{len(out)} stages; at most {MAX_STAGES}")
    total = sum(s.duration for s in out)
    if not total > 0:
        raise ValueError("the stages last 0 seconds in all")
    if not total <= MAX_RUN_TIME:
        raise ValueError(f"the stages last {total:g} s in all; at most {MAX_RUN_TIME:g} "
                         f"(a year)")
    if not max(s.target for s in out) > 0:
        raise ValueError(f"every stage's {kind} is 0")
    return kind, out


def benchmark_classes(value: Any) -> str | dict[str, int]:
    """One class's name (empty: the file's only subclass), or ``{Class: weight, ...}``."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict) or not value:
        raise ValueError("expected a class name, or a mapping of class names to weights "
                         "such as {Browse: 3, Buy: 1}")
    if len(value) > MAX_CLASSES:
        raise ValueError(f"{len(value)} classes; a mix has at most {MAX_CLASSES}")
    for name, weight in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{name!r} is not a class name")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 10**6:
            raise ValueError(f"{name}: weight {weight!r}: expected a whole number from 1 to "
                             f"1,000,000 (leave a class out to run none of it)")
    return dict(value)


@dataclass(frozen=True)
class GeneratorRule:
    """When a worker is saturated: over ``max_cpu`` of a core, or its event loop lagging
    over ``max_loop_lag`` seconds, or in the open model over ``max_behind_schedule``
    seconds behind its schedule, for ``seconds`` seconds in a row; ``fail``: a saturated
    run exits 7 (else it is flagged only)."""

    max_cpu: float = 0.9
    max_loop_lag: float = 0.020
    seconds: int = 3
    fail: bool = False
    max_behind_schedule: float = 0.100

    def describe(self, open_model: bool) -> str:
        """The rule in words, for the notes (its open-model part in the open model)."""
        if not open_model:
            return (f"over {self.max_cpu:.0%} of a core or loop lag over "
                    f"{1000 * self.max_loop_lag:g} ms for {self.seconds} s in a row")
        return (f"over {self.max_cpu:.0%} of a core, loop lag over "
                f"{1000 * self.max_loop_lag:g} ms or over "
                f"{1000 * self.max_behind_schedule:g} ms behind its schedule, for "
                f"{self.seconds} s in a row")


GENERATOR_KEYS = ("max_cpu", "max_loop_lag", "max_behind_schedule", "for", "on_saturation")


def generator(value: Any) -> GeneratorRule:
    """``{max_cpu: 90%, max_loop_lag: 20ms, max_behind_schedule: 100ms, for: 3s,
    on_saturation: warn|fail}``, each optional."""
    if isinstance(value, GeneratorRule):
        return value
    if not isinstance(value, dict) or set(map(str, value)) - set(GENERATOR_KEYS):
        raise ValueError("expected {max_cpu: 90%, max_loop_lag: 20ms, max_behind_schedule: "
                         "100ms, for: 3s, on_saturation: warn or fail}, each optional")
    rule = GeneratorRule()
    cpu = value.get("max_cpu", rule.max_cpu)
    if isinstance(cpu, str) and cpu.strip().endswith("%"):
        try:
            cpu = float(cpu.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"max_cpu: {cpu!r} is not a percentage") from None
    if isinstance(cpu, bool) or not isinstance(cpu, int | float) or not 0 < cpu <= 1:
        raise ValueError(f"max_cpu: expected a share of one core, 1% to 100% (got {cpu!r})")
    try:
        lag = positive_duration(value.get("max_loop_lag", rule.max_loop_lag))
    except ValueError as e:
        raise ValueError(f"max_loop_lag: {e}") from None
    try:
        behind = positive_duration(value.get("max_behind_schedule", rule.max_behind_schedule))
    except ValueError as e:
        raise ValueError(f"max_behind_schedule: {e}") from None
    try:
        seconds = positive_duration(value.get("for", rule.seconds))
    except ValueError as e:
        raise ValueError(f"for: {e}") from None
    if seconds != int(seconds):
        raise ValueError(f"for: whole seconds (the deltas come a second apart), got "
                         f"{seconds:g}s")
    action = value.get("on_saturation", "warn")
    if action not in ("warn", "fail"):
        raise ValueError(f"on_saturation: expected warn (flag it) or fail (exit 7), got "
                         f"{action!r}")
    return GeneratorRule(float(cpu), lag, int(seconds), action == "fail", behind)
