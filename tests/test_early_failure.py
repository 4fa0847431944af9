"""The early verdict that every client of a worker fails the same way before any I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop

from loadagent.early_failure import EVIDENCE, WINDOW, EarlyFailure, raised_before_io
from loadagent.scheduler import ClientScheduler
from protocol.client import ClientProtocol
from protocol.http import (
    HttpClientBusy,
    HttpClientClosed,
    HttpConnectError,
    HttpConnectTimeout,
    HttpInvalidRequest,
    HttpInvalidUrl,
    HttpReadTimeout,
    HttpResponse,
    HttpStatusError,
)
from protocol.stats import Totals, error_key


class InvalidUrlClientError(ValueError):
    """Named as aiohttp's: recognised by its class name, aiohttp is not imported."""


class InvalidURL(ValueError):
    """Named as aiohttp's and httpx's base class."""


class DerivedFromInvalidURL(InvalidURL):
    """Found through the MRO: only a base class carries a listed name."""


def call_failed(early: EarlyFailure, exc: BaseException, now: float = 0.0) -> None:
    early.call_failed(error_key("Client", exc), exc, now)


def init_failed(early: EarlyFailure, exc: BaseException, now: float = 0.0) -> None:
    early.init_failed(error_key("Client", exc), now)


def status_error() -> HttpStatusError:
    response = HttpResponse(503, [], b"", "GET", "http://127.0.0.1:1/x")
    with pytest.raises(HttpStatusError) as info:
        response.raise_for_status()
    return info.value


# -- (a) the same before-I/O error three times ---------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: HttpInvalidUrl("bad URL 'notaurl': no scheme", url="notaurl"),
    lambda: InvalidUrlClientError("notaurl"),
])
def test_three_calls_failing_with_one_invalid_url_error_give_a_verdict(
        make: Callable[[], Exception]) -> None:
    early = EarlyFailure(planned_clients=100)
    exc = make()
    for i in range(EVIDENCE):
        assert early.verdict is None, f"a verdict after only {i} calls"
        assert early.armed
        call_failed(early, make(), now=0.1 * i)
    assert early.verdict is not None
    assert f"{type(exc).__name__}: {exc}" in early.verdict
    assert "before any I/O" in early.verdict
    assert not early.armed  # decided once: nothing more to watch


def test_the_verdict_is_given_once_and_kept() -> None:
    early = EarlyFailure(10)
    for _ in range(EVIDENCE):
        call_failed(early, HttpInvalidUrl("bad URL 'x'"))
    verdict = early.verdict
    call_failed(early, ConnectionRefusedError("refused"))
    early.disarm()
    assert early.verdict == verdict


# -- (b) what disarms it for good ----------------------------------------------------------


def test_a_success_disarms_it_for_good() -> None:
    early = EarlyFailure(10)
    call_failed(early, HttpInvalidUrl("bad URL 'x'"))
    early.disarm()  # what the scheduler calls when a call succeeds
    for _ in range(2 * EVIDENCE):
        call_failed(early, HttpInvalidUrl("bad URL 'x'"))
    assert early.verdict is None and not early.armed


@pytest.mark.parametrize("other", [
    HttpInvalidUrl("bad URL 'y'"),  # the same type, another message
    HttpInvalidRequest("bad header"),  # another local error
    InvalidUrlClientError("bad URL 'x'"),  # another type, the same message
])
def test_a_different_error_disarms_it_for_good(other: Exception) -> None:
    early = EarlyFailure(10)
    call_failed(early, HttpInvalidUrl("bad URL 'x'"))
    call_failed(early, other)
    for _ in range(2 * EVIDENCE):
        call_failed(early, HttpInvalidUrl("bad URL 'x'"))
    assert early.verdict is None and not early.armed


@pytest.mark.parametrize("network", [
    ConnectionRefusedError(111, "Connection refused"),
    HttpConnectError("cannot connect to http://127.0.0.1:1", url="http://127.0.0.1:1"),
    HttpConnectTimeout("no connection within 1s"),
    TimeoutError(),
])
def test_a_network_like_error_disarms_it_even_when_every_call_raises_it(
        network: Exception) -> None:
    early = EarlyFailure(10)
    for _ in range(2 * EVIDENCE):
        call_failed(early, network)
    assert early.verdict is None and not early.armed
    # and nothing afterwards re-arms it
    for _ in range(2 * EVIDENCE):
        call_failed(early, HttpInvalidUrl("bad URL 'x'"))
    assert early.verdict is None


def test_a_network_like_error_after_local_ones_disarms_it() -> None:
    early = EarlyFailure(10)
    for _ in range(EVIDENCE - 1):
        call_failed(early, HttpInvalidUrl("bad URL 'x'"))
    call_failed(early, ConnectionRefusedError(111, "Connection refused"))
    call_failed(early, HttpInvalidUrl("bad URL 'x'"))
    assert early.verdict is None and not early.armed


def test_failures_within_the_window_count() -> None:
    early = EarlyFailure(10)
    for now in (0.0, WINDOW / 2, WINDOW):  # the window's last instant still counts
        call_failed(early, HttpInvalidUrl("bad URL 'x'"), now)
    assert early.verdict is not None


def test_the_end_of_the_window_disarms_it_for_good() -> None:
    early = EarlyFailure(10)
    call_failed(early, HttpInvalidUrl("bad URL 'x'"), 0.0)
    call_failed(early, HttpInvalidUrl("bad URL 'x'"), WINDOW / 2)
    call_failed(early, HttpInvalidUrl("bad URL 'x'"), WINDOW + 0.01)
    assert early.verdict is None and not early.armed
    for now in (WINDOW + 1, WINDOW + 2, WINDOW + 3):
        call_failed(early, HttpInvalidUrl("bad URL 'x'"), now)
    assert early.verdict is None


def test_the_window_starts_at_the_first_client_start() -> None:
    early = EarlyFailure(10)
    early.init_ok(100.0)
    for now in (100.0 + WINDOW + 1, 100.0 + WINDOW + 2, 100.0 + WINDOW + 3):
        call_failed(early, HttpInvalidUrl("bad URL 'x'"), now)
    assert early.verdict is None and not early.armed


def test_init_failures_after_the_window_give_no_verdict() -> None:
    early = EarlyFailure(10)
    init_failed(early, ValueError("x"), 0.0)
    init_failed(early, ValueError("x"), 1.0)
    init_failed(early, ValueError("x"), WINDOW + 1)
    assert early.verdict is None and not early.armed


# -- (c) init failures ---------------------------------------------------------------------


@pytest.mark.parametrize(("planned", "needed"), [(1, 1), (2, 2), (3, 3), (5, 3), (50_000, 3)])
def test_every_init_failing_gives_a_verdict_after_min_3_planned_failures(
        planned: int, needed: int) -> None:
    early = EarlyFailure(planned)
    for i in range(needed):
        assert early.verdict is None, f"a verdict after {i} of {needed} init failures"
        init_failed(early, ValueError("cannot reach notaurl"), now=0.01 * i)
    assert early.verdict is not None
    assert "init_before_use()" in early.verdict
    assert "ValueError: cannot reach notaurl" in early.verdict


@pytest.mark.parametrize("ok_after", [0, 1, EVIDENCE - 1])
def test_one_init_success_prevents_the_init_verdict(ok_after: int) -> None:
    early = EarlyFailure(10)
    for _ in range(ok_after):
        init_failed(early, ValueError("cannot reach notaurl"))
    early.init_ok(0.0)
    for _ in range(10):
        init_failed(early, ValueError("cannot reach notaurl"))
    assert early.verdict is None


def test_the_init_verdict_names_the_most_common_error() -> None:
    early = EarlyFailure(5)
    init_failed(early, KeyError("host"))
    init_failed(early, ValueError("cannot reach notaurl"))
    init_failed(early, ValueError("cannot reach notaurl"))
    assert early.verdict is not None
    assert "ValueError: cannot reach notaurl" in early.verdict


def test_planned_zero_never_arms() -> None:
    early = EarlyFailure(0)
    assert not early.armed
    early.init_ok(0.0)
    for _ in range(10):
        init_failed(early, ValueError("cannot reach notaurl"))
        call_failed(early, HttpInvalidUrl("bad URL 'x'"))
    assert early.verdict is None and not early.armed


# -- (d) which errors are raised before any I/O --------------------------------------------


@pytest.mark.parametrize("exc", [
    HttpInvalidUrl("bad URL"), HttpInvalidRequest("bad header"), HttpClientClosed("closed"),
    HttpClientBusy("busy"), InvalidUrlClientError("x"), InvalidURL("x"),
    DerivedFromInvalidURL("x"),
    *(type(name, (Exception,), {})("x") for name in (
        "InvalidURL", "InvalidUrlClientError", "NonHttpUrlClientError", "UnsupportedProtocol",
        "MissingSchema", "InvalidSchema")),
], ids=repr)
def test_local_errors_are_raised_before_io(exc: BaseException) -> None:
    assert raised_before_io(exc)


@pytest.mark.parametrize("exc", [
    OSError("x"), ConnectionRefusedError(111, "refused"), TimeoutError(), ValueError("x"),
    HttpConnectError("x"), HttpReadTimeout("x"), status_error(),
    type("InvalidUrl", (Exception,), {})("near, but not a listed name"),
], ids=repr)
def test_network_and_other_errors_are_not_raised_before_io(exc: BaseException) -> None:
    assert not raised_before_io(exc)


# -- through the scheduler: what a worker sees ---------------------------------------------


class AlwaysInvalidUrl(ClientProtocol):
    async def execute(self) -> None:
        raise HttpInvalidUrl("bad URL 'notaurl': no scheme", url="notaurl")


class SucceedsOnceThenInvalidUrl(ClientProtocol):
    calls = 0

    async def execute(self) -> None:
        SucceedsOnceThenInvalidUrl.calls += 1
        if SucceedsOnceThenInvalidUrl.calls > 1:
            raise HttpInvalidUrl("bad URL 'notaurl': no scheme", url="notaurl")


def run_scheduler(cls: type[ClientProtocol], clients: int) -> EarlyFailure:
    early = EarlyFailure(clients)

    async def main() -> None:
        sched = ClientScheduler(cls, "notaurl", 0.0, Totals(), early)
        sched.start(asyncio.get_running_loop().time(), [0.0] * clients)
        await asyncio.sleep(0.05)
        await sched.stop(1.0)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(main(), 20))
    return early


def test_a_worker_whose_every_call_raises_an_invalid_url_gets_a_verdict() -> None:
    early = run_scheduler(AlwaysInvalidUrl, 2)
    assert early.verdict is not None
    assert "HttpInvalidUrl: bad URL 'notaurl': no scheme" in early.verdict


def test_a_worker_with_one_successful_call_gets_no_verdict() -> None:
    SucceedsOnceThenInvalidUrl.calls = 0
    early = run_scheduler(SucceedsOnceThenInvalidUrl, 1)
    assert SucceedsOnceThenInvalidUrl.calls > EVIDENCE
    assert early.verdict is None
