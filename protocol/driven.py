"""What a worker and a client that drives its own calls share (``DrivenClient.drive``).

Apart from ``protocol.calls`` (imported by every client file): this one needs asyncio.
"""

from __future__ import annotations

from asyncio import CancelledError
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol.stats import OpStats

__all__ = ["CancelledBetweenCalls", "DrivenCalls", "ResendCall"]


class DrivenCalls:
    """What a worker hands a client it lets drive its own calls (``DrivenClient.drive``):
    where each successful call is recorded, as the worker's call loop records one, and
    whom to tell of the first success. One per client class in a worker.

    ``st`` is the calls' row and ``rows`` its histogram's tally (``Histogram.rows``);
    ``watching`` is true while the early-failure watch waits for a first success,
    ``first_ok()`` to be called at it; ``stopping`` becomes true at the stop: no call may
    start after it. ``ended``: the latest end of a call recorded by a drive that was
    cancelled (``perf_counter_ns``; 0 if none), which the worker's run time takes in."""

    __slots__ = ("ended", "first_ok", "rows", "st", "stopping", "watching")

    def __init__(self, st: OpStats, rows: list[list[int]], watching: bool,
                 first_ok: Callable[[], None]) -> None:
        self.st = st
        self.rows = rows
        self.watching = watching
        self.first_ok = first_ok
        self.stopping = False
        self.ended = 0


class CancelledBetweenCalls(CancelledError):
    """Raised by ``DrivenClient.drive`` when its task was cancelled after the drive had
    ended, its last call recorded: no call was in flight, none to count as cancelled."""


class ResendCall(Exception):
    """Raised by ``DrivenClient.drive`` for a call it started but could not finish, and
    that ``execute()`` should make again (a request the server closed its reused
    connection under, before any byte of its response): ``t0`` is when it started, what
    the call made again is timed from."""

    def __init__(self, t0: int) -> None:
        super().__init__(t0)
        self.t0 = t0
