"""Every exit code of the project, in one place (docs/architecture.md, "Exit codes").

``ExitCode`` is ``loadmaster``'s: when several apply, the first of ``PRECEDENCE`` wins
(an internal error hides everything, a config error hides a failed client, and so on
down to OK). ``AgentExitCode`` is ``loadagent start``'s, and a worker process's own.
"""

from __future__ import annotations

import signal
from enum import IntEnum

__all__ = ["PRECEDENCE", "AgentExitCode", "ExitCode", "first", "for_signal"]


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


class AgentExitCode(IntEnum):
    OK = 0  # stopped by a signal (after leaving its master cleanly), or told to stop
    INTERNAL = 1  # an error of ours (traceback shown)
    USAGE = 2  # a bad option, a master that refused it, or a protocol version mismatch
    MASTER_LOST = 5  # an embedded agent lost its master (a daemon dials again instead)
    AGENT_GONE = 70  # a worker process whose agent is gone (its pipe closed)


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
