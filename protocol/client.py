"""The class a user subclasses to describe one simulated client."""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ClientProtocol",
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
    """

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
