"""Tells early, from one worker's first clients, that every client fails the same way.

A run against ``--host notaurl`` would otherwise fail every call for the whole
``run_time``. The worker's verdict is "broken" when, before any call has succeeded:

- every client started so far failed ``init_before_use`` (at least ``EVIDENCE`` of them,
  or all of the worker's clients when it has fewer); or
- at least ``EVIDENCE`` calls failed, all with one error, of a kind raised before any
  I/O: an invalid URL or a misuse of the client (``HttpLocalError`` of our client, the
  URL errors of aiohttp, httpx and requests, by class name so none of them is imported).

One success, one different error or an error that may come from the network disarms it
for good, and so does the end of ``WINDOW`` seconds: a later failure is data, not a
broken setup. The master stops the run only when every worker with clients says so.
"""

from __future__ import annotations

from protocol.http import HttpLocalError
from protocol.stats import ErrorKey

EVIDENCE = 3
WINDOW = 10.0  # seconds after the worker's first client starts
# Exceptions raised before any byte is sent, by class name (in the class's MRO).
LOCAL_ERROR_NAMES = frozenset({
    "InvalidURL",  # aiohttp, httpx
    "InvalidUrlClientError",  # aiohttp
    "NonHttpUrlClientError",  # aiohttp: a URL without http(s)://
    "UnsupportedProtocol",  # httpx
    "MissingSchema",  # requests
    "InvalidSchema",  # requests
})


def raised_before_io(exc: BaseException) -> bool:
    """Whether ``exc`` is of a kind that is raised before any I/O happens."""
    if isinstance(exc, HttpLocalError):
        return True
    return any(cls.__name__ in LOCAL_ERROR_NAMES for cls in type(exc).__mro__)


class EarlyFailure:
    """Watches one worker's first inits and calls; ``verdict`` is set once, or never."""

    def __init__(self, planned_clients: int) -> None:
        self._needed = max(1, min(EVIDENCE, planned_clients))
        self.armed = planned_clients > 0  # an attribute, not a property: read per call
        self._deadline: float | None = None
        self._init_ok = 0
        self._init_failed: list[ErrorKey] = []
        self._call_error: ErrorKey | None = None
        self._call_failed = 0
        self.verdict: str | None = None

    def _expired(self, now: float) -> bool:
        if self._deadline is None:
            self._deadline = now + WINDOW
        if now > self._deadline:
            self.armed = False
        return not self.armed

    def init_ok(self, now: float) -> None:
        if self.armed and not self._expired(now):
            self._init_ok += 1

    def init_failed(self, key: ErrorKey, now: float) -> None:
        if not self.armed or self._expired(now):
            return
        self._init_failed.append(key)
        if self._init_ok == 0 and len(self._init_failed) >= self._needed:
            _, etype, message = max(set(self._init_failed), key=self._init_failed.count)
            self._decide(f"init_before_use() raised {etype}: {message} (so did every "
                         f"client started so far)")

    def disarm(self) -> None:
        """A call succeeded, or failed in a way that is data (returned False)."""
        self.armed = False

    def call_failed(self, key: ErrorKey, exc: BaseException, now: float) -> None:
        if not self.armed or self._expired(now):
            return
        if self._call_error is None:
            self._call_error = key
        if key != self._call_error or not raised_before_io(exc):
            self.armed = False
            return
        self._call_failed += 1
        if self._call_failed >= EVIDENCE:
            _, etype, message = key
            self._decide(f"{etype}: {message} (every call so far raised it, before any I/O)")

    def _decide(self, verdict: str) -> None:
        self.verdict = verdict
        self.armed = False
