"""The agent daemon's signals, stdin and clock offset (loadagent/daemon.py).

Without processes or ZeroMQ sockets: no worker is spawned, nothing connects to a
master, and a pipe stands in for stdin; the real sockets and processes are covered by
the e2e tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from loadagent.daemon import CLOCK_WINDOW, AgentDaemon, AgentOptions, ClockOffset
from tests.state_helpers import in_loop


# -- the agent daemon: signals, stdin, clock offset --------------------------------------
def agent_daemon(embedded: bool = False) -> AgentDaemon:
    opts = AgentOptions(master="tcp://127.0.0.1:1", name="agent-a", workers=1,
                        max_message=1 << 20, embedded=embedded)
    return AgentDaemon(opts, mp=None)  # type: ignore[arg-type]  # nothing is spawned


def test_agent_first_signal_asks_for_a_graceful_stop() -> None:
    d = agent_daemon()
    d._on_signal(signal.SIGTERM)
    assert (d.should_exit, d.force_exit) == (True, False)
    assert d._wake.is_set()  # the serve loop acts at once


def test_agent_second_signal_forces_the_exit() -> None:
    d = agent_daemon()
    d._on_signal(signal.SIGTERM)
    d._wake.clear()
    d._on_signal(signal.SIGINT)
    assert (d.should_exit, d.force_exit) == (True, True)
    assert d._wake.is_set()
    assert not d._master_gone  # a signal is no reason to skip LEAVING


@in_loop
async def test_agent_stdin_eof_means_the_master_is_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    stdin = os.fdopen(r, "rb", buffering=0)
    monkeypatch.setattr(sys, "stdin", stdin)
    d = agent_daemon(embedded=True)
    loop = asyncio.get_running_loop()
    try:
        os.write(w, b"anything")
        d._on_stdin()  # data, not EOF: the master is still there
        assert (d.should_exit, d.force_exit, d._wake.is_set()) == (False, False, False)
        loop.add_reader(r, d._on_stdin)
        os.close(w)
        w = -1
        await asyncio.wait_for(d._wake.wait(), 5)
        assert (d.should_exit, d.force_exit, d._master_gone) == (True, True, True)
        assert not loop.remove_reader(r)  # it stopped watching a closed stdin itself
    finally:
        loop.remove_reader(r)
        stdin.close()
        if w >= 0:
            os.close(w)


def test_clock_offset_takes_the_sample_with_the_shortest_round_trip() -> None:
    c = ClockOffset()
    c.sample(sent=0.0, master_time=10.5, received=1.0)  # rtt 1.0, offset 10.0
    c.sample(sent=2.0, master_time=12.45, received=2.1)  # rtt 0.1, offset 10.4
    c.sample(sent=3.0, master_time=20.0, received=3.5)  # rtt 0.5, offset 16.75
    assert c.rtt == pytest.approx(0.1)
    assert c.offset == pytest.approx(10.4)


@pytest.mark.parametrize(("offset", "estimate"), [(0.04, 0.0), (-0.04, 0.0), (0.2, 0.2),
                                                  (-0.2, -0.2)])
def test_clock_offset_within_half_the_round_trip_is_none(offset: float,
                                                         estimate: float) -> None:
    c = ClockOffset()
    c.sample(sent=100.0, master_time=100.05 + offset, received=100.1)  # rtt 0.1
    assert c.offset == pytest.approx(estimate)


def test_clock_offset_ignores_a_negative_round_trip() -> None:
    c = ClockOffset()
    c.sample(sent=0.0, master_time=5.5, received=1.0)
    c.sample(sent=2.0, master_time=99.0, received=1.9)  # the clock stepped back
    assert (c.rtt, c.offset) == (1.0, 5.0)


def test_clock_offset_forgets_samples_beyond_its_window() -> None:
    c = ClockOffset()
    c.sample(sent=0.0, master_time=5.005, received=0.01)  # the best ever: rtt 0.01
    for i in range(CLOCK_WINDOW):
        t = 10.0 + i
        c.sample(sent=t, master_time=t + 0.5 + 7.0, received=t + 1.0)  # rtt 1, offset 7
    assert (c.rtt, c.offset) == (1.0, 7.0)
