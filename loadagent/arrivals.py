"""The open model on one worker: calls start on a schedule, whatever the server does.

Glossary
--------
- *arrival*: one call of the run's schedule, with its *intended start*
  (``protocol.plan``: uniform or Poisson, split over the workers).
- *pool*: this worker's clients, at most its share of ``max_users``; its share of
  ``pre_allocated_users`` is made at START, the others when a call is due and no client
  is free.
- *late*: a call that started over ``LATE_AFTER_NS`` after its intended start; *dropped*:
  one that never started, because it could not start within ``max_schedule_lag``, or
  not before the stop.

Each client, once its call ends, takes the next arrival nobody took: it sleeps until the
arrival's intended start, or starts at once when that has passed (the call waited for a
free client: wrk2's way, so the queueing is measured, not hidden). A success is timed
three ways (``protocol.stats``): from the intended start (the headline), from the actual
start (service time), and the schedule lag between them.

Every arrival of [T0, T0 + run_time) is accounted for: it ends as a success or a
failure, or it is dropped. At the stop the worker first lets the arrivals due before it
start, then counts the ones still not started as dropped.
"""

from __future__ import annotations

import asyncio
import random
import time

from loadagent.early_failure import EarlyFailure
from loadagent.scheduler import RETURNED_FALSE, YIELD_AFTER_NS, YIELD_EVERY, ClientScheduler
from protocol.client import ClientProtocol
from protocol.histogram import SUB_BUCKET_BITS, Histogram
from protocol.plan import arrival_time
from protocol.stats import LATE_AFTER_NS, Totals

__all__ = ["Arrivals", "OpenScheduler"]

# grow the pool when the next arrival is this overdue and no client waits for one
GROW_AFTER_NS = 2_000_000
# at the stop, how long past its moment the arrivals due before it may still start
STOP_SETTLE_NS = 5_000_000


class Arrivals:
    """One worker's share of the run's arrival schedule, in ``time.perf_counter_ns``.

    ``next_ns`` is the intended start of the next arrival nobody took, or ``end_ns``
    (the stop) once the schedule is over; ``take()`` moves to the one after it.
    """

    __slots__ = ("_g", "_gap_ns", "_per_ns", "_rate", "_rng", "_step", "_t0_ns", "_unit",
                 "end_ns", "next_ns")

    def __init__(self, *, t0_ns: int, run_time: float, rate: float, time_unit: float,
                 worker: int, workers: int, poisson: bool, seed: str) -> None:
        self._t0_ns = t0_ns
        self._rate = rate
        self._unit = time_unit
        self._step = workers
        self._g = worker
        self.end_ns = t0_ns + round(run_time * 1e9)
        self._per_ns = rate / time_unit / workers / 1e9  # this worker's arrivals a ns
        self._rng: random.Random | None = None
        self._gap_ns = 0.0
        if poisson:
            self._rng = random.Random(seed)
            self._gap_ns = workers * time_unit / rate * 1e9  # the mean gap
            self.next_ns = t0_ns
            self.next_ns = self._poisson_next()
        else:
            self.next_ns = self._uniform_next()

    def _uniform_next(self) -> int:
        t = self._t0_ns + round(arrival_time(self._g, self._rate, self._unit) * 1e9)
        return t if t < self.end_ns else self.end_ns

    def _poisson_next(self) -> int:
        assert self._rng is not None
        t = self.next_ns + round(self._rng.expovariate(1.0) * self._gap_ns)
        return t if t < self.end_ns else self.end_ns

    def take(self) -> None:
        """The next arrival is taken: move to the one after it."""
        if self.next_ns >= self.end_ns:
            return
        if self._rng is None:
            self._g += self._step
            self.next_ns = self._uniform_next()
        else:
            self.next_ns = self._poisson_next()

    def skip_before(self, limit_ns: int) -> int:
        """Take every arrival intended before ``limit_ns``; how many."""
        n = 0
        while self.next_ns < limit_ns and self.next_ns < self.end_ns:
            self.take()
            n += 1
        return n

    def due(self, now_ns: int) -> int:
        """About how many arrivals nobody took are due at ``now_ns``."""
        if self.next_ns > now_ns or self.next_ns >= self.end_ns:
            return 0
        return 1 + int((min(now_ns, self.end_ns) - self.next_ns) * self._per_ns)

    def stop_at(self, when_ns: int) -> None:
        """The schedule ends at ``when_ns`` (a STOP before run_time)."""
        if when_ns < self.end_ns:
            self.end_ns = when_ns
            if self.next_ns > when_ns:
                self.next_ns = when_ns


class OpenScheduler(ClientScheduler):
    """Runs one worker's share of an open-model schedule on a pool of clients."""

    def __init__(self, cls: type[ClientProtocol], host: str, delta: Totals,
                 early: EarlyFailure | None, arrivals: Arrivals, pool: int,
                 pre_allocated: int, max_schedule_lag: float) -> None:
        super().__init__(cls, host, 0.0, delta, early)
        self._arrivals = arrivals
        self._pool = pool
        self._max_lag_ns = round(max_schedule_lag * 1e9)
        self._made = pre_allocated  # clients made or being made (``start`` makes these)
        self._waiting = 0  # clients sleeping until their next call's intended start
        delta.op(self._name).schedule()

    def start_pool(self, pre_allocated: int) -> None:
        """Make the pre-allocated clients now (before T0, so their calls start on time)."""
        self.start(asyncio.get_running_loop().time(), [0.0] * pre_allocated)

    def _tick(self) -> None:
        super()._tick()
        self._grow()

    def _grow(self) -> None:
        """A call is overdue and no client waits for one: make clients, within the pool."""
        room = self._pool - self._made
        if room <= 0 or self._waiting or self._stopping:
            return
        arrivals = self._arrivals
        overdue = self._last_turn - arrivals.next_ns
        if overdue < GROW_AFTER_NS or arrivals.next_ns >= arrivals.end_ns:
            return
        making = self._made - self.started - self.init_failed
        n = min(room, arrivals.due(self._last_turn) - making)
        if n <= 0:
            return
        loop = asyncio.get_running_loop()
        for _ in range(n):
            task = loop.create_task(self._client_main())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._made += n

    async def _call_loop(self, client: ClientProtocol) -> None:
        execute = client.execute
        totals = self._delta
        name = self._name
        st = totals.op(name)
        sched = st.schedule()
        assert isinstance(st.hist, Histogram)  # a worker records sparsely, in place
        assert isinstance(sched.service, Histogram) and isinstance(sched.lag, Histogram)
        counts = st.hist.counts
        service = sched.service.counts
        lags = sched.lag.counts
        arrivals = self._arrivals
        clock = time.perf_counter_ns
        sleep = asyncio.sleep
        max_lag = self._max_lag_ns
        task = asyncio.current_task()
        assert task is not None
        idle = self._idle
        watching = self._early.armed
        n = 0
        ended = 0
        held = False  # the last call held the loop (no turn stamped while it ran)
        try:
            while True:
                intended = arrivals.next_ns
                if intended >= arrivals.end_ns:
                    return  # the schedule is over
                arrivals.take()
                began = clock()
                if intended > began:
                    idle.add(task)
                    self._waiting += 1
                    try:
                        await sleep((intended - began) / 1e9)
                    except asyncio.CancelledError:  # the stop: it will not start
                        sched.dropped += 1
                        raise
                    finally:
                        self._waiting -= 1
                        idle.discard(task)
                    began = clock()
                    if began < intended:  # the loop's timers round to the millisecond
                        intended = began
                elif began - intended > max_lag:  # too late: dropped, and all as late
                    sched.dropped += 1 + arrivals.skip_before(began - max_lag)
                    continue
                else:
                    n += 1
                    if n & (YIELD_EVERY - 1) == 0 or held:
                        idle.add(task)
                        try:
                            await sleep(0)
                        finally:
                            idle.discard(task)
                        began = clock()
                lag = began - intended
                if lag > LATE_AFTER_NS:
                    sched.late += 1
                try:
                    r = await execute()
                except asyncio.CancelledError:
                    st.fail += 1
                    totals.add_error((name, *self._cancelled_as))
                    self.grace.cancelled += 1
                    raise
                except Exception as e:
                    ended = clock()
                    st.fail += 1
                    self._on_call_error(e)
                else:
                    ended = clock()
                    if r is False:
                        st.fail += 1
                        totals.add_error((name, *RETURNED_FALSE))
                    else:
                        dt = ended - intended  # corrected: from the intended start
                        st.ok += 1
                        st.sum_ns += dt
                        if dt > st.max_ns:
                            st.max_ns = dt
                        if dt < st.min_ns:
                            st.min_ns = dt
                        # histogram.bucket_index, inlined (tests check they agree)
                        s = dt.bit_length() - 8
                        i = dt if s <= 0 else (s << SUB_BUCKET_BITS) + (dt >> s)
                        counts[i] = counts.get(i, 0) + 1
                        dt = ended - began  # service time
                        s = dt.bit_length() - 8
                        i = dt if s <= 0 else (s << SUB_BUCKET_BITS) + (dt >> s)
                        service[i] = service.get(i, 0) + 1
                        s = lag.bit_length() - 8
                        i = lag if s <= 0 else (s << SUB_BUCKET_BITS) + (lag >> s)
                        lags[i] = lags.get(i, 0) + 1
                    if watching:
                        self._early.disarm()
                        watching = False
                held = ended - began > YIELD_AFTER_NS and self._last_turn < began
                if self._stopping:  # this call was in flight at the stop
                    self.grace.finished += 1
                    return
        finally:
            if ended > self.last_call_end_ns:
                self.last_call_end_ns = ended

    async def stop(self, grace: float) -> None:
        """Let the arrivals due before the stop start, count those that cannot as dropped,
        then stop as the closed model does."""
        arrivals = self._arrivals
        now = time.perf_counter_ns()
        if not self._stopping:
            if arrivals.end_ns - now > STOP_SETTLE_NS:
                arrivals.stop_at(now)  # a STOP before run_time: no arrival after it
            # the loop's timer may fire the stop a little before the schedule's end: the
            # arrivals due before it still start
            if arrivals.next_ns < arrivals.end_ns or self._waiting:
                await asyncio.sleep((max(arrivals.end_ns - now, 0) + STOP_SETTLE_NS) / 1e9)
        sched = self._delta.op(self._name).schedule()
        sched.dropped += arrivals.skip_before(arrivals.end_ns)
        await super().stop(grace)

    def abort(self, reason: str) -> None:
        self._arrivals.stop_at(time.perf_counter_ns())
        super().abort(reason)
