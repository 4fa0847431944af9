"""How a run's clients are spread over workers: one global timeline.

``users`` in the config is the number of clients (simulated users) of the whole run.
Client k (0-based) starts at ``T0 + k / hatch_rate`` on worker ``k mod W``. Every
worker's share is within one of every other's, the shares sum exactly to ``users``,
and the ramp is the same whatever W is: a hatch rate of 1 over 4 workers still starts
one client a second.
"""

from __future__ import annotations

__all__ = ["arrival_time", "arrival_workers", "client_offsets", "clients_of", "scheduled_arrivals"]


def clients_of(worker: int, total_workers: int, users: int) -> int:
    """How many of the run's ``users`` clients worker ``worker`` (0-based) runs."""
    return len(range(worker, users, total_workers))


def client_offsets(worker: int, total_workers: int, users: int,
                   hatch_rate: float) -> list[float]:
    """Start times, in seconds after T0, of that worker's clients."""
    return [k / hatch_rate for k in range(worker, users, total_workers)]


# -- the open model ---------------------------------------------------------------------
# Arrival g (0-based) of the run's schedule is due ``arrival_time(g, ...)`` seconds after T0
# (uniform arrivals), on worker ``g mod A`` where A = ``arrival_workers(...)``: the workers
# that have a share of the client pool. The shares sum exactly to the schedule, and the
# workers' arrivals interleave: worker w's fall between worker w-1's and w+1's, not all at
# once. Poisson arrivals: each of the A workers draws its own Poisson process of rate
# 1/A of the whole (their sum is a Poisson process of the whole rate).


def arrival_workers(total_workers: int, max_users: int) -> int:
    """How many workers take arrivals: those with at least one client of the pool."""
    return min(total_workers, max_users)


def arrival_time(g: int, rate: float, time_unit: float) -> float:
    """Seconds after T0 of arrival ``g`` of a uniform schedule of ``rate`` per
    ``time_unit`` seconds."""
    return g * time_unit / rate


def scheduled_arrivals(rate: float, time_unit: float, run_time: float,
                       worker: int = 0, workers: int = 1) -> int:
    """How many arrivals of a uniform schedule fall in [T0, T0 + run_time): of the whole
    run, or of worker ``worker`` of ``workers`` taking arrivals."""
    n = int(run_time * rate / time_unit)  # the count, give or take the float's rounding
    while arrival_time(n, rate, time_unit) < run_time:
        n += 1
    while n > 0 and arrival_time(n - 1, rate, time_unit) >= run_time:
        n -= 1
    return len(range(worker, n, workers))
