"""How a run's clients are spread over workers: one global timeline.

``users`` in the config is the number of clients (simulated users) of the whole run.
Client k (0-based) starts at ``T0 + k / hatch_rate`` on worker ``k mod W``. Every
worker's share is within one of every other's, the shares sum exactly to ``users``,
and the ramp is the same whatever W is: a hatch rate of 1 over 4 workers still starts
one client a second.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["RateProfile", "arrival_time", "arrival_workers", "class_counts", "class_sequence",
           "client_offsets", "client_windows", "clients_of", "scheduled_arrivals",
           "stage_users"]


def clients_of(worker: int, total_workers: int, users: int) -> int:
    """How many of the run's ``users`` clients worker ``worker`` (0-based) runs."""
    return len(range(worker, users, total_workers))


def client_offsets(worker: int, total_workers: int, users: int,
                   hatch_rate: float) -> list[float]:
    """Start times, in seconds after T0, of that worker's clients."""
    return [k / hatch_rate for k in range(worker, users, total_workers)]


# -- load shapes: stages, mixes ---------------------------------------------------------
# Stages (the closed model): the target number of clients goes linearly from one stage's
# value to the next (from 0 at T0), and client k runs while the target is above k: it
# starts when the target rises past k and stops (after its call in flight) when the target
# falls to k, and may start again. As with a hatch rate, the same clients run whatever
# the number of workers; a rise of 10 clients over 10 s starts client k at k seconds.


def stage_users(stages: Sequence[tuple[float, float]], t: float) -> float:
    """The target of ``stages`` ((duration, target) each, from 0) ``t`` seconds after T0."""
    at, value = 0.0, 0.0
    for duration, target in stages:
        if t < at + duration:
            return value + (target - value) * (t - at) / duration
        at, value = at + duration, target
    return value


def client_windows(worker: int, total_workers: int,
                   stages: Sequence[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """For each client of ``worker`` (clients k = worker, worker + W, ... below the largest
    target), the spans of seconds after T0 when it runs: [start, end), ``math.inf`` for a
    span still open at the last stage's end."""
    users = int(max((target for _, target in stages), default=0))
    ks = range(worker, users, total_workers)
    windows: list[list[tuple[float, float]]] = [[] for _ in ks]
    opened: list[float | None] = [None] * len(ks)
    at, value = 0.0, 0
    for duration, target in stages:
        goal = int(target)
        lo, hi = min(value, goal), max(value, goal)
        first = lo + (worker - lo) % total_workers  # the first of this worker's k >= lo
        for k in range(first, hi, total_workers):
            # the moment the target passes k: rising, client k starts; falling, it stops
            # (the fraction first: k == goal gives exactly the stage's end, where the next
            # stage's rise starts)
            t = at + (duration * ((k - value) / (goal - value)) if duration else 0.0)
            i = (k - worker) // total_workers
            if goal > value:
                opened[i] = t
            else:
                begun = opened[i]
                assert begun is not None
                if t > begun:
                    windows[i].append((begun, t))
                opened[i] = None
        at, value = at + duration, goal
    for i, begun in enumerate(opened):
        if begun is not None:
            windows[i].append((begun, math.inf))
    return windows


def class_counts(users: int, weights: Sequence[int]) -> list[int]:
    """``users`` clients split over classes by weight: each class gets the whole part of its
    share, and the clients left go to the largest remainders (the first class on a tie)."""
    total = sum(weights)
    counts = [users * w // total for w in weights]
    rest = users - sum(counts)
    order = sorted(range(len(weights)), key=lambda c: (-(users * weights[c] % total), c))
    for c in order[:rest]:
        counts[c] += 1
    return counts


def class_sequence(users: int, weights: Sequence[int]) -> list[int]:
    """The class of each client k of the run: ``class_counts`` of each, spread evenly over
    k (a class's clients at the middles of equal parts of [0, users)), so that the first
    clients a ramp starts are mixed by weight too."""
    counts = class_counts(users, weights)
    classes = np.repeat(np.arange(len(counts)), counts)
    keys = np.concatenate([(np.arange(n) + 0.5) / n for n in counts if n] or [np.zeros(0)])
    seq: list[int] = classes[np.lexsort((classes, keys))].tolist()  # by key, then class
    return seq


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
    return len(range(worker, RateProfile(rate, time_unit).arrivals_before(run_time), workers))


class RateProfile:
    """The open model's rate over the run: constant, or stages ramped linearly from 0
    ((duration, rate per ``time_unit``) each). ``count(t)`` is how many arrivals a uniform
    schedule has due in [T0, T0 + t) (a real number: Λ(t), the rate's integral), and
    ``time_of(x)`` its inverse, the first t where ``count`` reaches x (``math.inf`` if
    never): arrival g of the run is due at ``time_of(g)``. With a constant rate
    ``time_of(g)`` is exactly ``arrival_time(g, ...)``."""

    def __init__(self, rate: float, time_unit: float,
                 stages: Sequence[tuple[float, float]] = ()) -> None:
        self._rate, self._unit = rate, time_unit
        self.constant = not stages
        # each segment: its start, length, rate a second at its start, slope, count before
        self._segments: list[tuple[float, float, float, float, float]] = []
        at = value = done = 0.0
        for duration, target in stages:
            r0, r1 = value / time_unit, target / time_unit
            if duration > 0:
                self._segments.append((at, duration, r0, (r1 - r0) / duration, done))
                done += (r0 + r1) / 2 * duration
            at, value = at + duration, target
        # after the last stage, its rate goes on (the run ends there: only for the maths)
        self._segments.append((at, math.inf, value / time_unit, 0.0, done))
        self._starts = [seg[4] for seg in self._segments]
        self._times = [seg[0] for seg in self._segments]

    def count(self, t: float) -> float:
        if self.constant:
            return t * self._rate / self._unit
        start, _, r0, slope, before = self._segments[
            max(0, bisect.bisect_right(self._times, t) - 1)]
        tau = t - start
        return before + r0 * tau + slope * tau * tau / 2

    def time_of(self, x: float) -> float:
        if self.constant:
            return x * self._unit / self._rate
        i = max(0, bisect.bisect_left(self._starts, x) - 1)
        while True:  # the first segment whose count reaches x (a rate-0 one never does)
            start, length, r0, slope, before = self._segments[i]
            rest = x - before
            end_count = before + r0 * length + slope * length * length / 2 \
                if length != math.inf else math.inf
            if x <= end_count or i + 1 == len(self._segments):
                break
            i += 1
        if rest <= 0:
            return start
        if x > end_count:  # past the last stage, at a rate of 0: never
            return math.inf
        # rest = r0 tau + slope tau^2 / 2, solved without cancellation for either sign; x
        # is reached within the segment, so a root below 0 or a tau past its end is the
        # float's rounding at the segment's end (a ramp down to 0, say)
        den = r0 + math.sqrt(max(r0 * r0 + 2 * slope * rest, 0.0))
        if den <= 0:
            return start + length
        return start + min(2 * rest / den, length)

    def due(self, g: int) -> float:
        """Seconds after T0 of arrival ``g`` of a uniform schedule: at ``arrival_time``
        with a constant rate; with stages, once half of it has accumulated (so a ramp
        from 0 does not start with an arrival at T0)."""
        return self.time_of(g if self.constant else g + 0.5)

    def dues_ns(self, first: int, stop: int, step: int, t0_ns: int = 0) -> list[int]:
        """``t0_ns + round(due(g) * 1e9)`` for g in ``range(first, stop, step)``, with a
        constant rate only: the same float operations in the same order on numpy arrays
        (and round half to even, as ``round``), so the very same integers, for a tenth
        of the cost."""
        assert self.constant
        gs = np.arange(first, stop, step, dtype=np.int64).astype(np.float64)
        ns = np.rint(gs * self._unit / self._rate * 1e9).astype(np.int64)
        out: list[int] = (ns + np.int64(t0_ns)).tolist()
        return out

    def arrivals_before(self, run_time: float) -> int:
        """How many arrivals (g = 0, 1, ...) are due in [T0, T0 + run_time)."""
        n = max(0, int(self.count(run_time)))
        while self.due(n) < run_time:
            n += 1
        while n > 0 and self.due(n - 1) >= run_time:
            n -= 1
        return n
