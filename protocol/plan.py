"""How a run's users are spread over workers: one global timeline.

User k (0-based) starts at ``T0 + k / hatch_rate`` on worker ``k mod W``. Every
worker's share is within one of every other's, the shares sum exactly to ``users``,
and the ramp is the same whatever W is: a hatch rate of 1 over 4 workers still starts
one user a second.
"""

from __future__ import annotations


def users_of(worker: int, total_workers: int, users: int) -> int:
    """How many users worker ``worker`` (0-based) of ``total_workers`` runs."""
    return len(range(worker, users, total_workers))


def user_offsets(worker: int, total_workers: int, users: int, hatch_rate: float) -> list[float]:
    """Start times, in seconds after T0, of that worker's users."""
    return [k / hatch_rate for k in range(worker, users, total_workers)]
