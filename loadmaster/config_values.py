"""The checks of config values: each takes what YAML or the command line gave and returns
the value the run uses, or raises ValueError saying what is accepted."""

from __future__ import annotations

import math
import re
import sys
from typing import Any

__all__ = [
    "DURATION_FORMS",
    "arrival_process",
    "boolean",
    "duration_seconds",
    "non_empty_str",
    "non_negative_int",
    "parse_duration",
    "path_list",
    "positive_duration",
    "positive_int",
    "positive_number",
    "string",
    "worker_count",
]

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
