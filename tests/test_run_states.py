"""The master's signals (loadmaster/run.py).

Without processes or ZeroMQ sockets: no agent is started and nothing is bound; the
real sockets and processes are covered by the e2e tests.
"""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadmaster.bundle import Bundle
from loadmaster.config import Config
from loadmaster.run import Run
from loadmaster.run_options import RunOptions


# -- the master's run: signals -----------------------------------------------------------
@pytest.fixture
def master_run() -> Iterator[Run]:
    cfg = Config(host="http://127.0.0.1:1", users=1, run_time=1.0,
                 benchmark_class_file=Path("client.py"), agents=1)
    run = Run(cfg, Bundle(), RunOptions(), io.StringIO())
    try:
        yield run
    finally:
        run._ctx.term()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_master_first_signal_stops_gracefully(master_run: Run, signum: int, code: int,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    master_run._on_signal(signum)
    assert (master_run.should_exit, master_run.force_exit) == (True, False)
    assert master_run._changed.is_set()  # the run loop acts at once
    assert master_run._interrupted("during the load").code == code
    assert "stopping gracefully" in capsys.readouterr().err


def test_master_second_signal_aborts_and_the_first_names_the_exit(
        master_run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    master_run._on_signal(signal.SIGTERM)
    master_run._on_signal(signal.SIGINT)
    assert (master_run.should_exit, master_run.force_exit) == (True, True)
    assert master_run._interrupted("during the load").code == 143
    assert capsys.readouterr().err.count("interrupted") == 1
