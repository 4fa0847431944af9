"""The class a user subclasses to describe one simulated client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from protocol.calls import MAX_STEP_NAME, Step, call_names

if TYPE_CHECKING:
    from protocol.driven import DrivenCalls

__all__ = [
    "ClientProtocol",
    "DrivenClient",
]


class ClientProtocol:
    """One simulated client. Subclass it and implement ``execute``.

    Lifecycle, per worker process:

    - ``global_init(custom_conf)``: static, once per worker before any client exists;
      ``custom_conf`` holds every config key that is not a system key. It may be a
      plain function or a coroutine function.
    - ``init_before_use(host)``: once per client, inside the worker's running event
      loop (so an aiohttp session can be created there). May be sync or async.
    - ``execute()``: one timed call. Raising, or returning ``False``, is a failure;
      returning ``None`` or ``True`` is a success. The framework sleeps ``wait_time``
      after each call.
    - ``shutdown()``: once per client at the end of the run, if its
      ``init_before_use`` returned.

    ``name`` labels the calls in the statistics; it defaults to the class name.

    Named steps: ``async with self.step("login"): ...`` inside ``execute()`` times that
    block into a row of its own, named ``login``, beside the call's row (in the
    dashboard, the final block, the result file and the reports; the totals over all
    names leave it out: its time is already in its call's). A step that ends normally
    is a success of its row; one that raises is a failure of its row, with the error
    under its name, and the exception goes on (so the call fails too, unless ``execute``
    catches it). Steps nest, each its own row. Outside a worker's call
    (``init_before_use``, ``shutdown``, a test) a step is not counted. A run may have at
    most 1,000 names in all (the master drops a delta over that): name steps from a fixed
    set, never from data such as a URL or an id.
    """

    # Empty: a subclass that declares no __slots__ has a __dict__ (any attribute, as
    # always); one that declares its own has none, so a worker's many clients of it cost
    # only their slots.
    __slots__ = ()

    name: ClassVar[str | None] = None

    def __init__(self) -> None:
        pass

    @staticmethod
    def global_init(custom_conf: dict[str, Any] | None = None) -> Any:
        return None

    def init_before_use(self, host: str) -> Any:
        return None

    async def execute(self) -> bool | None:
        raise NotImplementedError(f"{type(self).__name__}.execute() is not implemented")

    async def shutdown(self) -> None:
        return None

    def step(self, name: str) -> Step:
        """A named step: ``async with self.step("login"):`` (or ``with``) times the block
        into the row ``name`` (see the class docstring).

        ``name``: a printable, non-blank string of at most ``MAX_STEP_NAME`` characters,
        not the client's own ``name`` (that row is the whole call's). TypeError or
        ValueError otherwise, here, not when the block runs."""
        if type(name) is not str:
            if not isinstance(name, str):
                raise TypeError(f"step name must be a str, got {type(name).__name__}: "
                                f"{name!r:.60}")
            name = str(name)  # a StrEnum member, say: the row is named by its value
        if not name or len(name) > MAX_STEP_NAME or name.isspace() or not name.isprintable():
            raise ValueError(f"step name must be 1-{MAX_STEP_NAME} printable characters, "
                             f"not blank: got {name!r:.60}")
        if name == (type(self).name or type(self).__name__) or name in call_names:
            raise ValueError(f"step name {name!r} is a client class's name: its row is the "
                             f"whole call's; name the step otherwise")
        return Step(name)


class DrivenClient(ClientProtocol):
    """A client whose calls the worker may let it drive itself, from its connection's
    callbacks rather than one ``await execute()`` a call: the built-in fixed-request
    client (``protocol.http.FixedRequest``) is one. Not for client files to subclass.

    The worker does so only in the closed model, for a class with no wait time, no
    stages and no iterations, and only while ``drivable()`` is true of it; everywhere
    else (and for the call that opens a connection) it calls ``execute()``, which must
    make the same call.
    """

    __slots__ = ()

    @classmethod
    def drivable(cls) -> bool:
        """Whether ``drive`` makes the same calls as ``execute`` for this class."""
        return False

    async def drive(self, calls: DrivenCalls, t0: int) -> int:
        """Make calls until the stop, each started as the one before it ended, the first
        at ``t0`` (``perf_counter_ns``); record each success into ``calls`` as the call
        loop records one. Return when no call is in flight: at the stop, or when the
        next call cannot be made so (no open connection, say): the end of the last call
        recorded (``t0`` if none), where the next call starts. A call that fails ends
        it: raise its exception, not counted (the worker counts it); raise
        ``ResendCall`` for one to make again with ``execute()``. Cancelled, set
        ``calls.ended`` to the end of the last call recorded if later, drop the call in
        flight and let the cancellation go on; if none was in flight (the drive had
        ended), raise ``CancelledBetweenCalls``. A response that comes after the
        cancellation is not recorded."""
        return t0
