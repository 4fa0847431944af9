"""The master's exit codes, in one place (docs/architecture.md, "Exit codes").

When several apply, the first of ``PRECEDENCE`` wins: an internal error hides
everything, a config error hides a failed client, and so on down to OK.
"""

from __future__ import annotations

import signal
from enum import IntEnum

__all__ = ["PRECEDENCE", "ExitCode", "first", "for_signal"]


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # an error of ours (traceback shown)
    USAGE = 2  # bad usage or config
    CLIENT_FAILED = 3  # the client code failed before load, or every client fails at once
    NOT_ENOUGH_AGENTS = 4  # fewer agents than `agents:` within agent_timeout
    AGENT_LOST = 5  # an agent or worker was lost or left during the run
    THRESHOLD_FAILED = 6  # a threshold failed (thresholds:)
    SATURATED = 7  # the generator was saturated and on_saturation: fail
    REGRESSION = 8  # loadmaster compare found a regression
    INTERRUPTED = 130  # SIGINT (Ctrl-C); the final block is still printed
    TERMINATED = 143  # SIGTERM; the final block is still printed


PRECEDENCE = (
    ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.CLIENT_FAILED, ExitCode.NOT_ENOUGH_AGENTS,
    ExitCode.INTERRUPTED, ExitCode.TERMINATED, ExitCode.AGENT_LOST,
    ExitCode.THRESHOLD_FAILED, ExitCode.SATURATED, ExitCode.REGRESSION, ExitCode.OK,
)


def first(codes: set[ExitCode]) -> ExitCode:
    """The code that wins among ``codes`` (OK when there is none)."""
    return next((c for c in PRECEDENCE if c in codes), ExitCode.OK)


def for_signal(signum: int) -> ExitCode:
    """128 + the signal's number, as a shell reports a process killed by it."""
    return ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
