"""What the task making a call records into, for code that has no reference to it.

Light on purpose (no numpy): the built-in HTTP client imports it, and so may any
client file; ``import protocol`` (the master's command line too) imports it through
``protocol.client``.
"""

from __future__ import annotations

from contextvars import ContextVar
from time import perf_counter_ns
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol.stats import OpStats, Totals

__all__ = ["MAX_STATUS_CODES", "MAX_STEP_NAME", "Step", "call_names", "current_op",
           "current_totals"]

# distinct status codes per name in one message: every three-digit code
MAX_STATUS_CODES = 900
# The longest step name. The wire bounds an operation name only by the size of its
# message: this keeps a name a person can read in a table (the console shows 24).
MAX_STEP_NAME = 200

call_names: set[str] = set()
"""The run's client classes' row names, where a worker (or ``--once``) fills them in: a
step may not count under one."""

current_op: ContextVar[OpStats | None] = ContextVar("current_op", default=None)
"""The stats of the call the current task is making: set by the worker's scheduler for
each client's task once its ``init_before_use`` returned; ``None`` outside a worker.
The built-in HTTP client counts each response's status and bytes into it."""

current_totals: ContextVar[Totals | None] = ContextVar("current_totals", default=None)
"""What the current task's calls are counted into (the worker's delta totals): set with
``current_op``; ``None`` outside a worker. Named steps (``ClientProtocol.step``) count
their own rows into it."""


class Step:
    """A named part of a call, timed into its own row of ``current_totals``.

    Made by ``ClientProtocol.step``, which checks the name; used once per block, as
    ``async with`` or ``with``. A block that ends normally is a success of the row,
    timed as the call loop times a call; one that raises an ``Exception`` is a failure
    of the row, with its error under the step's name, and the exception goes on. A
    cancellation (or any other ``BaseException``) counts nothing. Without totals in the
    context (outside a worker's call) the block just runs.
    """

    __slots__ = ("_name", "_t0", "_totals")

    def __init__(self, name: str) -> None:
        self._name = name
        self._totals: Totals | None = None
        self._t0 = 0

    def __enter__(self) -> None:
        self._totals = current_totals.get()
        self._t0 = perf_counter_ns()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        t1 = perf_counter_ns()
        totals = self._totals
        if totals is None:
            return
        self._totals = None
        st = totals.ops.get(self._name)
        if st is None:
            if self._name in call_names:
                raise ValueError(f"step name {self._name!r} is the name of a client class's "
                                 f"calls; name the step otherwise")
            st = totals.op(self._name)
            st.step = True  # left out of the totals over every name
        elif not st.step:  # another class's row, in a mix
            raise ValueError(f"step name {self._name!r} is the name of a client class's "
                             f"calls; name the step otherwise")
        if exc is None:
            st.record_ok(t1 - self._t0)
        elif isinstance(exc, Exception):
            # here, not at the top: protocol.stats imports numpy (loaded already in a
            # worker, the only place with totals)
            from protocol.stats import error_key
            st.fail += 1
            totals.add_error(error_key(self._name, exc))

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"Step({self._name!r})"
