"""How a run's clients are spread over workers: one global timeline.

``users`` in the config is the number of clients (simulated users) of the whole run.
Client k (0-based) starts at ``T0 + k / hatch_rate`` on worker ``k mod W``. Every
worker's share is within one of every other's, the shares sum exactly to ``users``,
and the ramp is the same whatever W is: a hatch rate of 1 over 4 workers still starts
one client a second.
"""

from __future__ import annotations

__all__ = ["client_offsets", "clients_of"]


def clients_of(worker: int, total_workers: int, users: int) -> int:
    """How many of the run's ``users`` clients worker ``worker`` (0-based) runs."""
    return len(range(worker, users, total_workers))


def client_offsets(worker: int, total_workers: int, users: int,
                   hatch_rate: float) -> list[float]:
    """Start times, in seconds after T0, of that worker's clients."""
    return [k / hatch_rate for k in range(worker, users, total_workers)]
