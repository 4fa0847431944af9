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
arrival's intended start when that is over ``EARLY_NS`` away, or starts at once: on time
(a start before the intended one counts from the actual start), or late when the
intended start has passed (the call waited for a free client: wrk2's way, so the
queueing is measured, not hidden). A success is timed
three ways (``protocol.stats``): from the intended start (the headline), from the actual
start (service time), and the schedule lag between them.

Every arrival of [T0, T0 + run_time) is accounted for: it ends as a success or a
failure, or it is dropped. At the stop the worker first lets the arrivals due before it
start, then counts the ones still not started as dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import math
import time
from collections.abc import Callable

import numpy as np

from loadagent.early_failure import EarlyFailure
from loadagent.scheduler import YIELD_AFTER_NS, YIELD_EVERY, ClientScheduler, _turn
from protocol.client import ClientProtocol
from protocol.histogram import Histogram
from protocol.plan import RateProfile
from protocol.stats import LATE_AFTER_NS, Totals

__all__ = ["Arrivals", "OpenScheduler"]

# grow the pool when the next arrival is this overdue and no client waits for one
GROW_AFTER_NS = 2_000_000
# at the stop, how long past its moment the arrivals due before it may still start
STOP_SETTLE_NS = 5_000_000
BLOCK = 512  # intended starts computed at a time
END = 1 << 62  # the intended start that ends the schedule: after every other
# A call due this soon starts at once: the loop's timers have a millisecond's resolution
# (one due sooner may fire that much early anyway), and a timer per call would cost a
# generator at a high rate what it exists to measure.
EARLY_NS = 1_000_000


class Arrivals:
    """One worker's share of the run's arrival schedule, in ``time.perf_counter_ns``.

    The intended starts are computed a block at a time into ``times``; ``times[i]`` is the
    next one nobody took, or ``END`` once the schedule is over (the call loop reads them
    there, the cheapest way a Python loop can). A uniform schedule ends after this
    worker's exact share of the run's arrivals (``protocol.plan``); a Poisson one at the
    end of run_time. Skipping many arrivals (drops, the stop) costs nothing per arrival:
    uniform ones are counted, Poisson ones drawn as a count (the process forgets).
    """

    __slots__ = ("_cut", "_done", "_k", "_prev", "_profile", "_quota", "_rng", "_step",
                 "_t0_ns", "_total", "_worker", "end_ns", "i", "times")

    def __init__(self, *, t0_ns: int, run_time: float, rate: float, time_unit: float,
                 worker: int, workers: int, poisson: bool, seed: str,
                 profile: RateProfile | None = None, iterations: int = 0) -> None:
        self._t0_ns = t0_ns
        self._profile = profile or RateProfile(rate, time_unit)
        self._step = workers
        self._worker = worker
        self.end_ns = t0_ns + round(run_time * 1e9)
        self._rng: np.random.Generator | None = None
        self._total = 0  # uniform: this worker's arrivals in the run
        # uniform: how many of them are computed; Poisson: the last one's place on the
        # schedule's count (``RateProfile.count``: this worker's arrivals come a mean of
        # ``workers`` apart there, whatever the rate)
        self._k: float = 0
        # Poisson with iterations: how many more arrivals it may have (-1: no limit)
        self._quota = -1
        # uniform: the iterations, not run_time, end this worker's schedule
        self._cut = False
        self._done = False  # the last block is computed (it ends with END)
        if poisson:
            digest = hashlib.sha256(seed.encode()).digest()
            self._rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
            if iterations:
                self._quota = len(range(worker, iterations, workers))
        else:
            n = self._profile.arrivals_before(run_time)
            self._cut = 0 < iterations < n
            self._total = len(range(worker, min(n, iterations) if iterations else n, workers))
        self.times: list[int] = []
        self.i = 0
        self._prev = -1  # the last intended start of the blocks before this one (-1: none)
        self.refill()

    def _time(self, k: int) -> int:
        """Uniform: the intended start of this worker's arrival ``k``."""
        return self._t0_ns + round(self._profile.due(self._worker + k * self._step) * 1e9)

    def _ns(self, xs: list[float]) -> list[int]:
        """Poisson: the intended starts of places ``xs`` on the schedule's count."""
        profile, t0 = self._profile, self._t0_ns
        if profile.constant:
            ts: list[int] = (np.array(xs) * (profile.time_of(1.0) * 1e9) + t0).astype(
                np.int64).tolist()
            return ts
        end = self.end_ns
        # (past the schedule's end: at its end, which cuts the block there)
        return [end if (t := profile.time_of(x)) * 1e9 >= end - t0 else t0 + int(t * 1e9)
                for x in xs]

    def _count_at(self, ns: int) -> float:
        """The schedule's count (``RateProfile.count``) at ``ns``."""
        return self._profile.count((ns - self._t0_ns) / 1e9)

    def refill(self) -> None:
        """The next block of intended starts (the call loop calls it at a block's end)."""
        if self.times and self.times[-1] != END:
            self._prev = self.times[-1]
        self.i = 0
        if self._done:
            self.times = [END]
            return
        if self._rng is None:
            ks = range(int(self._k), min(int(self._k) + BLOCK, self._total))
            if self._profile.constant:  # _time(k) for each k, vectorised
                w, step = self._worker, self._step
                self.times = self._profile.dues_ns(
                    w + ks.start * step, w + ks.stop * step, step, self._t0_ns)
            else:
                self.times = [self._time(k) for k in ks]
            self._k = ks.stop
            self._done = self._k >= self._total
        else:
            xs = (np.cumsum(self._rng.exponential(self._step, BLOCK)) + self._k).tolist()
            ts = self._ns(xs)
            cut = bisect.bisect_left(ts, self.end_ns)
            if 0 <= self._quota < cut:
                cut = self._quota
            self.times = ts[:cut]
            self._k = xs[-1]
            self._done = cut < len(ts)
            if self._quota >= 0:
                self._quota -= cut
        if self._done:
            self.times.append(END)

    @property
    def capped(self) -> bool:
        """The run's iterations, not its run_time, ended the schedule (so its worker may
        stop before run_time)."""
        return self._cut or self._quota == 0

    @property
    def next_ns(self) -> int:
        """The intended start of the next arrival nobody took; END: none left."""
        return self.times[self.i]

    def take(self) -> None:
        """The next arrival is taken: move to the one after it."""
        if self.times[self.i] >= END:
            return
        self.i += 1
        if self.i == len(self.times):
            self.refill()

    def skip_before(self, limit_ns: int) -> int:
        """Take every arrival intended before ``limit_ns``; how many."""
        times, i = self.times, self.i
        j = bisect.bisect_left(times, limit_ns, i)
        n = j - i
        if j < len(times) or self._done:  # all of them in this block
            self.i = j
            if j == len(times):
                self.refill()
            return n
        # past this block: count the rest without computing each
        if self._rng is None:
            k_lim = self._first_at(limit_ns)
            n += k_lim - int(self._k)
            self._k = k_lim
            self._done = k_lim >= self._total
        else:
            x_end = self._count_at(min(limit_ns, self.end_ns))
            if x_end > self._k:
                mean = (x_end - self._k) / self._step
                # past numpy's range the count is its mean, give or take a millionth
                more = int(self._rng.poisson(mean)) if mean < 1e15 else round(mean)
                if self._quota >= 0:
                    more = min(more, self._quota)
                    self._quota -= more
                    self._done = self._done or self._quota == 0
                n += more
                self._k = x_end
            if limit_ns >= self.end_ns:
                self._done = True
        self.refill()
        return n

    def drop_rest(self) -> int:
        """Take every arrival left in the schedule; how many."""
        return self.skip_before(END)

    def due(self, now_ns: int) -> int:
        """About how many arrivals nobody took are due at ``now_ns``."""
        nxt = self.times[self.i]
        if nxt > now_ns:  # END too
            return 0
        return 1 + int((self._count_at(min(now_ns, self.end_ns)) - self._count_at(nxt))
                       / self._step)

    def _first_at(self, limit_ns: int) -> int:
        """Uniform: the first of this worker's arrivals (from the next to compute) intended
        at or after ``limit_ns``: from the rate, then exactly."""
        k = int(self._k)
        g = self._count_at(limit_ns)
        k_lim = max(k, min(self._total, math.ceil((g - self._worker) / self._step)))
        while k_lim > k and self._time(k_lim - 1) >= limit_ns:
            k_lim -= 1
        while k_lim < self._total and self._time(k_lim) < limit_ns:
            k_lim += 1
        return k_lim

    def stop_at(self, when_ns: int) -> None:
        """The schedule ends at ``when_ns`` (a STOP before run_time, an abort): the
        arrivals from then on are not in it. One already taken that is due less than
        ``EARLY_NS`` after it (a call started that early is on time) stays in it: the
        end moves just past it."""
        taken = self._taken_before(when_ns + EARLY_NS)
        if taken >= when_ns:
            when_ns = taken + 1
        if when_ns >= self.end_ns:
            return
        self.end_ns = when_ns
        cut = bisect.bisect_left(self.times, when_ns, self.i)
        if cut < len(self.times) or self._done:  # the end is in this block
            if self.i:
                self._prev = self.times[self.i - 1]
            self.times = [*self.times[self.i:cut], END]
            self.i = 0
            self._done = True
        elif self._rng is None:  # beyond it: the blocks to come stop there
            self._total = self._first_at(when_ns)
        # (a Poisson block is cut at end_ns as it is computed)


    def _taken_before(self, limit_ns: int) -> int:
        """The latest intended start before ``limit_ns`` of an arrival already taken (or
        skipped); -1 if none."""
        j = bisect.bisect_left(self.times, limit_ns, 0, self.i)
        if j:
            return self.times[j - 1]
        return self._prev if self._prev < limit_ns else -1


class OpenScheduler(ClientScheduler):
    """Runs one worker's share of an open-model schedule on a pool of clients."""

    def __init__(self, cls: type[ClientProtocol], host: str, delta: Totals,
                 early: EarlyFailure | None, arrivals: Arrivals, pool: int,
                 pre_allocated: int, max_schedule_lag: float) -> None:
        super().__init__(cls, host, 0.0, delta, early)
        self._drivable = False  # its own call loop: every call through execute()
        self._arrivals = arrivals
        self._pool = pool
        self._max_lag_ns = round(max_schedule_lag * 1e9)
        self._made = pre_allocated  # clients made or being made (``start`` makes these)
        self._waiting = 0  # clients sleeping until their next call's intended start
        # how far behind its schedule it fell at worst since ``take_behind`` (a late or
        # dropped call's lag), ns
        self.behind_ns = 0
        # called once every arrival of the schedule has ended (iterations: before run_time)
        self.on_done: Callable[[], None] | None = None
        delta.op(self._name).schedule()

    def check_done(self) -> None:
        """``on_done`` once the schedule is over, ended by the iterations, and no client
        is in a call."""
        if self.on_done is not None and not self.running and not self._stopping and \
                self._arrivals.next_ns >= END and self._arrivals.capped:
            done, self.on_done = self.on_done, None
            done()

    def start_pool(self, pre_allocated: int) -> None:
        """Make the pre-allocated clients now (before T0, so their calls start on time)."""
        self.start(asyncio.get_running_loop().time(), [0.0] * pre_allocated)

    def _on_init_error(self, e: Exception) -> None:
        """A client's init_before_use raised: its error is counted (not as a failure: it
        was no call of the schedule) and its place in the pool is free again."""
        self._made -= 1
        self._count_init_error(e)

    def _tick(self) -> None:
        super()._tick()
        if self._stopping:
            return
        # the calls that can no longer start in time are dropped as their time passes,
        # not when a client is free again (the live figures show them then)
        arrivals = self._arrivals
        limit = self._last_turn - self._max_lag_ns
        oldest = arrivals.times[arrivals.i]
        if oldest < limit:
            self.behind_ns = max(self.behind_ns, self._last_turn - oldest)
            self._delta.op(self._name).schedule().dropped += arrivals.skip_before(limit)
        self._grow()

    def _grow(self) -> None:
        """A call is overdue and no client waits for one: make clients, within the pool."""
        room = self._pool - self._made
        if room <= 0 or self._waiting or self._stopping:
            return
        arrivals = self._arrivals
        overdue = self._last_turn - arrivals.next_ns
        if overdue < GROW_AFTER_NS or arrivals.next_ns >= END:
            return
        making = self._made - self.started  # (a failed one left _made)
        n = min(room, arrivals.due(self._last_turn) - making)
        if n <= 0:
            return
        loop = asyncio.get_running_loop()
        for _ in range(n):
            task = loop.create_task(self._call_loop())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._made += n

    async def _call_loop(self) -> None:
        """A client's task: the client started (``_begin``), then it takes the next
        arrival, waits for its intended start, calls, and so on until the schedule ends
        or the stop; ``check_done`` as it ends, however it ends."""
        task = asyncio.current_task()
        assert task is not None
        try:
            client = await self._begin(task)
        except BaseException:
            self.check_done()
            raise
        if client is None:
            self.check_done()
            return
        execute = client.execute
        st = self._delta.op(self._name)
        sched = st.schedule()
        assert isinstance(st.hist, Histogram)  # a worker records sparsely, in place
        assert isinstance(sched.service, Histogram) and isinstance(sched.lag, Histogram)
        # the histograms' dense tallies (Histogram.rows), as the closed model's loop
        counts = st.hist.rows()
        service = sched.service.rows()
        lags = sched.lag.rows()
        arrivals = self._arrivals
        clock = time.perf_counter_ns
        sleep = asyncio.sleep
        max_lag = self._max_lag_ns
        early = EARLY_NS
        idle = self._idle
        watching = self._early.armed
        n = 0
        ended = 0
        now = clock()  # the end of the last call (nothing waits between it and the next)
        held = False  # the last call held the loop (no turn stamped while it ran)
        try:
            while True:
                # the next arrival nobody took (Arrivals.take, inlined)
                i = arrivals.i
                times = arrivals.times
                intended = times[i]
                if intended >= END:
                    return  # the schedule is over
                i += 1
                if i < len(times):
                    arrivals.i = i
                else:
                    arrivals.refill()
                began = now
                if intended > began + early:
                    idle.add(task)
                    self._waiting += 1
                    try:
                        await sleep((intended - began) / 1e9)
                    except asyncio.CancelledError:  # the stop: it will not start
                        if intended < arrivals.end_ns:  # (a STOP may have come before it)
                            sched.dropped += 1
                        raise
                    finally:
                        self._waiting -= 1
                        idle.discard(task)
                    if intended >= arrivals.end_ns:
                        return  # a STOP came while it waited: not in the schedule now
                    began = now = clock()
                    if began - intended > max_lag:  # the loop woke it too late
                        sched.dropped += 1
                        self.behind_ns = max(self.behind_ns, began - intended)
                        continue
                elif began - intended > max_lag:  # too late: dropped, and all as late
                    self.behind_ns = max(self.behind_ns, began - intended)
                    # (as late by the clock read now, not by ``began``: else the next one
                    # is late by the time this took, and so on, one drop at a time)
                    now = clock()
                    sched.dropped += 1 + arrivals.skip_before(now - max_lag)
                    continue
                else:  # due, or nearly: at once
                    n += 1
                    if n & (YIELD_EVERY - 1) == 0 or held:
                        idle.add(task)
                        try:
                            await _turn()  # asyncio.sleep(0), no coroutine made
                        except asyncio.CancelledError:  # the stop: it will not start
                            if intended < arrivals.end_ns:
                                sched.dropped += 1
                            raise
                        finally:
                            idle.discard(task)
                        began = now = clock()
                if began < intended:  # early, within the timers' resolution: on time
                    intended = began
                lag = began - intended
                if lag > LATE_AFTER_NS:
                    sched.late += 1
                    if lag > self.behind_ns:
                        self.behind_ns = lag
                try:
                    r = await execute()
                except asyncio.CancelledError:
                    self._on_call_cancelled(st)
                    raise
                except Exception as e:
                    ended = clock()
                    self._on_call_error(st, e)
                else:
                    ended = clock()
                    if r is False:
                        self._on_call_false(st)
                    else:
                        dt = ended - intended  # corrected: from the intended start
                        st.ok += 1
                        st.sum_ns += dt
                        if dt > st.max_ns:
                            st.max_ns = dt
                        if dt < st.min_ns:
                            st.min_ns = dt
                        # into the tallies (Histogram.rows: two subscripts a value)
                        s = dt.bit_length() - 8
                        if s > 0:
                            counts[s][dt >> s] += 1
                        else:
                            counts[0][dt] += 1
                        dt = ended - began  # service time
                        s = dt.bit_length() - 8
                        if s > 0:
                            service[s][dt >> s] += 1
                        else:
                            service[0][dt] += 1
                        s = lag.bit_length() - 8
                        if s > 0:
                            lags[s][lag >> s] += 1
                        else:
                            lags[0][lag] += 1
                    if watching:
                        self._early.disarm()
                        watching = False
                held = ended - began > YIELD_AFTER_NS and self._last_turn < began
                now = ended
                if self._stopping:  # this call was in flight at the stop
                    self.grace.finished += 1
                    return
        finally:
            if ended > self.last_call_end_ns:
                self.last_call_end_ns = ended
            self.running -= 1
            self._tasks.discard(task)
            self.check_done()

    def take_behind(self, now_ns: int) -> int:
        """How far behind its schedule it fell at worst since the last call (ns): the
        latest start or drop of a call after its intended start, or the call now waiting
        longest for a client (a pool all busy starts nothing, and so times nothing)."""
        behind, self.behind_ns = self.behind_ns, 0
        waiting = now_ns - self._arrivals.next_ns  # (END, once the schedule is over)
        return max(behind, waiting)

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
            if arrivals.next_ns < END or self._waiting:
                await asyncio.sleep((max(arrivals.end_ns - now, 0) + STOP_SETTLE_NS) / 1e9)
        sched = self._delta.op(self._name).schedule()
        sched.dropped += arrivals.drop_rest()
        await super().stop(grace)

    def abort(self, reason: str) -> None:
        self._arrivals.stop_at(time.perf_counter_ns())
        super().abort(reason)
