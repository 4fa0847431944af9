"""The run's YAML config: load, check, apply command-line overrides.

System keys are the seed's (host, users, hatch_rate, run_time, worker,
benchmark_class_file, wait_time, enable_dash) and the ones the architecture adds;
every other key reaches ``global_init`` as ``custom_conf``, with a warning when it
looks like a misspelt system key.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import msgpack
import yaml

DEFAULTS: dict[str, Any] = {
    "hatch_rate": None,  # = users: every user in the first second
    "wait_time": 0.0,
    "worker": "auto",
    "enable_dash": False,
    "benchmark_class": "",
    "print_interval": 2.0,
    "stop_grace": 10.0,
    "agents": 0,
    "agent_timeout": 60.0,
    "files": [],
}
REQUIRED = ("host", "users", "run_time", "benchmark_class_file")
SYSTEM_KEYS = frozenset(REQUIRED) | frozenset(DEFAULTS)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class ConfigError(ValueError):
    """A config problem; the message names the file and key and what is accepted."""


@dataclass
class Config:
    path: Path
    host: str
    users: int
    hatch_rate: float
    run_time: float
    benchmark_class_file: Path
    wait_time: float = 0.0
    worker: int | None = None  # None = auto
    enable_dash: bool = False
    benchmark_class: str = ""
    print_interval: float = 2.0
    stop_grace: float = 10.0
    agents: int = 0
    agent_timeout: float = 60.0
    files: list[str] = field(default_factory=list)
    custom: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def parse_duration(value: Any) -> float:
    """Seconds from 90, 1.5, "90", "90s", "2m", "1h30m" or "250ms"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a duration, not true/false")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range
            seconds = math.inf
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
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
                raise ValueError(f"{value!r} is not a duration") from None
    else:
        raise ValueError(f"{type(value).__name__} is not a duration")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a non-negative duration")
    return seconds


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number of at least 0")
    return value


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or not value <= sys.float_info.max:  # inf, nan, and ints float() cannot hold
        raise ValueError("expected a number above 0")
    return float(value)


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("expected a duration above 0")
    return seconds


def _non_empty_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _worker(value: Any) -> int | None:
    if value == "auto" or value is None:
        return None
    try:
        return _positive_int(value)
    except ValueError:
        raise ValueError("expected `auto` or a whole number of at least 1") from None


def _files(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of file or folder paths")
    return list(value)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "host": _non_empty_str,
    "users": _positive_int,
    "hatch_rate": _positive_number,
    "run_time": _positive_duration,
    "benchmark_class_file": _non_empty_str,
    "wait_time": parse_duration,
    "worker": _worker,
    "enable_dash": _bool,
    "benchmark_class": _str,
    "print_interval": _positive_duration,
    "stop_grace": parse_duration,
    "agents": _non_negative_int,
    "agent_timeout": _positive_duration,
    "files": _files,
}


def load_config(path: Path, overrides: dict[str, Any] | None = None,
                cwd: Path | None = None) -> Config:
    """Read and check ``path``; ``overrides`` (command-line options) win over the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read the config: not UTF-8 text ({e.reason} at "
                          f"byte {e.start})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {key!r}: keys must be strings")
    return build_config(path, {**raw, **(overrides or {})}, cwd or Path.cwd())


def build_config(path: Path, raw: dict[str, Any], cwd: Path) -> Config:
    values: dict[str, Any] = {}
    for key in REQUIRED:
        if raw.get(key) is None:
            raise ConfigError(f"{path}: key {key!r} is missing; it is required")
    for key, check in _CHECKS.items():
        value = raw.get(key)
        if value is None:  # absent, or present with no value (`files:`)
            value = DEFAULTS.get(key)
        if value is None:
            values[key] = None
            continue
        try:
            values[key] = check(value)
        except ValueError as e:
            raise ConfigError(f"{path}: key {key!r}: {e} (got {value!r})") from None
    if values["hatch_rate"] is None:
        values["hatch_rate"] = float(values["users"])
    class_file = Path(values["benchmark_class_file"])
    if not class_file.is_absolute():
        class_file = cwd / class_file
    if not class_file.is_file():
        raise ConfigError(f"{path}: key 'benchmark_class_file': {values['benchmark_class_file']!r} "
                          f"is not a file (relative paths start at {cwd})")
    values["benchmark_class_file"] = class_file
    custom = {k: v for k, v in raw.items() if k not in SYSTEM_KEYS}
    warnings = []
    for key, value in custom.items():
        try:  # exactly what workers will decode
            msgpack.unpackb(msgpack.packb(value), strict_map_key=True)
        except (TypeError, ValueError, OverflowError) as e:
            raise ConfigError(
                f"{path}: key {key!r}: this value cannot be sent to the workers ({e}); "
                f"custom keys hold strings, numbers, booleans, null, lists and mappings "
                f"with string keys (quote a date as a string)") from None
        close = difflib.get_close_matches(key, SYSTEM_KEYS, n=1, cutoff=0.8)
        if close:
            warnings.append(f"{path}: key {key!r} is not a system key (did you mean "
                            f"{close[0]!r}?); it is passed to global_init as a custom key")
    names = {f.name for f in fields(Config)}
    return Config(path=path, custom=custom, warnings=warnings,
                  **{k: v for k, v in values.items() if k in names})
