"""Helpers shared by the state-machine tests: an event loop per test, a job, a FINAL."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from protocol.stats import Totals
from protocol.wire.messages import Final, Job


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (fixtures still reach it by name)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 10))

    return run


def make_job(workers: int, run_time: float = 10.0, stop_grace: float = 30.0) -> Job:
    return Job(run_id="0123456789abcdef", host="http://127.0.0.1:1", class_file="client.py",
               class_name="Client", custom_conf={}, users=workers, hatch_rate=1.0,
               run_time=run_time, wait_time=0.0, stop_grace=stop_grace,
               total_workers=workers, worker_ids=list(range(workers)), bundle=[])


def final(worker: int, clients: int = 1) -> Final:
    return Final(worker=worker, totals=Totals(), last_end=1.0, clients=clients, aborted=False,
                 start_lag=0.0, stopped_at=1.0, grace=0.0, grace_finished=0,
                 grace_cancelled=0)
