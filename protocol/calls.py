"""What the task making a call records into, for code that has no reference to it.

Light on purpose (no numpy): the built-in HTTP client imports it, and so may any
client file.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol.stats import OpStats

__all__ = ["MAX_STATUS_CODES", "current_op"]

# distinct status codes per name in one message: every three-digit code
MAX_STATUS_CODES = 900

current_op: ContextVar[OpStats | None] = ContextVar("current_op", default=None)
"""The stats of the call the current task is making: set by the worker's scheduler for
each client's task once its ``init_before_use`` returned; ``None`` outside a worker.
The built-in HTTP client counts each response's status and bytes into it."""
