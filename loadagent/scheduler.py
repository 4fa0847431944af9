"""Runs one worker's simulated clients: hatching, the timed call loop, stop and shutdown.

Glossary
--------
- *client*: one instance of the user's ``ClientProtocol`` subclass, driven by one task.
- *delta totals*: what happened since the last published delta; the call loop
  writes into them directly and the publisher drains them in place once a second.
- *grace*: after STOP, how long calls already running may take before they are
  cancelled (and counted as failures). What happened in it is kept apart
  (``GraceReport``), and a cancelled call does not extend the run time.

The call loop is the hot path of the whole project: it touches only locals, the
slots of one ``OpStats`` and its histogram's tally (``Histogram.rows``: two list
subscripts a call, no bucket arithmetic, no dict look-up), reads the clock once a call
(the end of a call is the start of the next one when nothing waits between them),
makes no object of its own (no coroutine, future or bound method), and yields to the
event loop every ``YIELD_EVERY`` calls, or after a call that held the loop
``YIELD_AFTER_NS``, so that a client whose ``execute()`` never suspends cannot starve
the publisher, the stop or the other clients. "Held the loop" is told apart from
"waited long" by a ticker that stamps each turn the loop gets: a long call during
which no stamp came held it. A turn is a bare ``yield`` (``_turn``: no coroutine
made), not registered as idle: the stop is seen after it. The end of the last call
(``last_call_end_ns``) is worked out as the loop ends, not kept a call.

A client costs its task, one coroutine frame (its call loop's, few locals; a client
with something between calls, two: ``_client_main`` and the shaped loop's) and its
context's two variables: no done callback, no bound method, no per-client state in the
scheduler but its place in ``_tasks`` and ``_clients``.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import time
import types
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

from loadagent.early_failure import EarlyFailure
from protocol.calls import current_op, current_totals
from protocol.client import ClientProtocol, DrivenClient
from protocol.driven import CancelledBetweenCalls, DrivenCalls, ResendCall
from protocol.histogram import Histogram
from protocol.stats import OpStats, Totals, error_key

YIELD_EVERY = 32
YIELD_AFTER_NS = 5_000_000  # a call that held the loop this long yields at once
TURN_TICK = 0.002  # seconds between the ticker's stamps of a turn of the loop
# clients due at once are started this many at a time, the loop turning between batches,
# so 50,000 clients due at T0 do not keep the publisher (and everything else) waiting
HATCH_BATCH = 64
CANCEL_WAIT = 1.0
RETURNED_FALSE = ("Failure", "execute() returned False")
CANCELLED_AT_STOP = ("Cancelled", "call still running when the stop grace ran out")


@types.coroutine
def _turn() -> Generator[None, None, None]:
    """Give the loop a turn: ``asyncio.sleep(0)`` without a coroutine around it."""
    yield


@dataclass
class GraceReport:
    """What the stop grace held: the calls in flight at the stop and what became of them."""

    seconds: float = 0.0  # from the stop until the last of them ended or was cancelled
    finished: int = 0  # ended by themselves (success or failure)
    cancelled: int = 0  # still running when the grace ran out, or at an abort


class Budget:
    """A worker's share of the run's ``iterations``, over every class it runs: a call is
    claimed before it starts (``left`` down, ``busy`` up) and released as it ends
    (``busy`` down), by the shaped call loop, inline; once none is left and the last
    claimed one has ended, ``check`` calls ``on_done`` (once)."""

    __slots__ = ("_on_done", "busy", "left")

    def __init__(self, share: int, on_done: Callable[[], None]) -> None:
        self.left = share
        self.busy = 0  # claimed calls not ended yet
        self._on_done: Callable[[], None] | None = on_done

    def check(self) -> None:
        if self.left <= 0 and self.busy <= 0 and self._on_done is not None:
            done, self._on_done = self._on_done, None
            done()


@dataclass(frozen=True)
class Pause:
    """Between a closed-model client's calls: a wait drawn from [low, high] (constant when
    equal), or ``pacing`` seconds from one call's start to the next's."""

    low: float = 0.0
    high: float = 0.0
    pacing: float = 0.0


class ClientScheduler:
    def __init__(
        self,
        cls: type[ClientProtocol],
        host: str,
        wait_time: float,
        delta: Totals,
        early: EarlyFailure | None = None,
        *,
        pause: Pause | None = None,
        budget: Budget | None = None,
    ) -> None:
        self._cls = cls
        self._host = host
        self._wait = wait_time
        self._pause = pause if pause is not None and (
            pause.pacing or pause.high > pause.low) else None
        self._budget = budget
        self._t0_loop = 0.0
        # a call loop with more to do between calls than a constant wait: a wait form,
        # stages (a client's windows), iterations
        self._shaped = self._pause is not None or budget is not None
        # a class whose clients drive their own calls (DrivenClient) with nothing between
        # them: run by _driven_loop, its clients sharing one DrivenCalls (made on first use)
        self._drivable = (not self._shaped and self._wait <= 0
                          and issubclass(cls, DrivenClient) and cls.drivable())
        self._driven: DrivenCalls | None = None
        self._delta = delta
        self._name = cls.name or cls.__name__
        self._task_name = f"{self._name} client"
        self._early = early or EarlyFailure(0)
        self._stopping = False
        self._clients: list[ClientProtocol] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # tasks not inside execute(): cancelled at once on stop
        self._idle: set[asyncio.Task[None]] = set()
        self._hatcher: asyncio.Task[None] | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._last_turn = 0  # perf_counter_ns of the ticker's latest stamp
        # what a call cancelled now is counted as: the grace ran out, or an abort
        self._cancelled_as = CANCELLED_AT_STOP
        self.running = 0
        self.started = 0  # clients whose init_before_use returned
        self.init_failed = 0  # clients whose init_before_use raised
        # perf_counter_ns at the end of the last call that finished by itself (0: none)
        self.last_call_end_ns = 0
        self.grace = GraceReport()

    def start(self, t0_loop: float, offsets: Sequence[float],
              windows: Sequence[Sequence[tuple[float, float]]] = ()) -> None:
        """Start one client at each loop time ``t0_loop + offset`` (offsets ascending);
        with ``windows`` (stages), client i runs in windows[i] only (seconds after T0,
        [start, end) each; its offset is its first window's start)."""
        loop = asyncio.get_running_loop()
        self._t0_loop = t0_loop
        self._hatcher = loop.create_task(self._hatch(t0_loop, offsets, windows))
        self._tick()

    def _tick(self) -> None:
        """Stamp a turn of the loop, every TURN_TICK while clients run."""
        self._last_turn = time.perf_counter_ns()
        self._ticker = asyncio.get_running_loop().call_later(TURN_TICK, self._tick)

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _hatch(self, t0_loop: float, offsets: Sequence[float],
                     windows: Sequence[Sequence[tuple[float, float]]]) -> None:
        loop = asyncio.get_running_loop()
        batch = 0
        for i, offset in enumerate(offsets):
            delay = t0_loop + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                batch = 0
            elif batch >= HATCH_BATCH:
                await asyncio.sleep(0)
                batch = 0
            if self._stopping:
                return
            # named: one string for all, not a "Task-N" each; it leaves ``_tasks`` by itself
            # as it ends (no done callback, and its context, kept per client)
            coro = self._client_main(windows[i] if windows else ()) if (
                self._shaped or windows) else self._driven_loop() if (
                self._drivable) else self._call_loop()
            self._tasks.add(loop.create_task(coro, name=self._task_name))
            batch += 1

    async def _begin(self, task: asyncio.Task[None]) -> ClientProtocol | None:
        """The start of a client's task: its client made and started, the task's context
        set, the client counted as running. None if it did not start or the stop came
        first; then, or if this raises, the task has left ``_tasks`` and ends. A call
        loop that got a client ends with ``running -= 1`` and leaves ``_tasks``."""
        try:
            client = await self._started()
        except BaseException:
            self._tasks.discard(task)
            raise
        if client is None or self._stopping:
            self._tasks.discard(task)
            return None
        # this task's own context: what the built-in HTTP client counts (statuses,
        # bytes) from here on lands under this client's name; init_before_use's
        # requests do not
        current_op.set(self._delta.op(self._name))
        current_totals.set(self._delta)
        self.running += 1
        return client

    async def _client_main(self, windows: Sequence[tuple[float, float]] = ()) -> None:
        """The task of a client with something between its calls (``_shaped_loop``); a
        client without is its call loop's task alone (``_call_loop``: a frame less on
        every call's way to the loop and back)."""
        task = asyncio.current_task()
        assert task is not None
        client = await self._begin(task)
        if client is None:
            return
        try:
            await self._shaped_loop(client, windows)
        finally:
            self.running -= 1
            self._tasks.discard(task)

    async def _started(self) -> ClientProtocol | None:
        """A new client, its init_before_use returned; None if either raised (counted)."""
        try:
            client = self._cls()
            r = client.init_before_use(self._host)
            if inspect.isawaitable(r):
                await r
        except Exception as e:  # no shutdown() for it: as __exit__ after a failed __enter__
            self._on_init_error(e)
            return None
        self._clients.append(client)
        self.started += 1
        if self._early.armed:
            self._early.init_ok(time.monotonic())
        return client

    def _on_init_error(self, e: Exception) -> None:
        """A client's init_before_use raised: a failure of its name, and its error."""
        self.init_failed += 1
        self._delta.op(self._name).fail += 1
        self._count_init_error(e)

    def _count_init_error(self, e: Exception) -> None:
        key = error_key(self._name, e)
        self._delta.add_error(key)
        if self._early.armed:
            self._early.init_failed(key, time.monotonic())

    # A call that did not succeed, counted out of the call loops (the cold path): a
    # failure of ``st`` (the loop's operation) and its error.
    def _on_call_error(self, st: OpStats, e: Exception) -> None:
        """A call raised."""
        st.fail += 1
        key = error_key(self._name, e)
        self._delta.add_error(key)
        if self._early.armed:
            self._early.call_failed(key, e, time.monotonic())

    def _on_call_false(self, st: OpStats) -> None:
        """A call returned False."""
        st.fail += 1
        self._delta.add_error((self._name, *RETURNED_FALSE))

    def _on_call_cancelled(self, st: OpStats) -> None:
        """A call cancelled: the stop grace ran out, or an abort."""
        st.fail += 1
        self._delta.add_error((self._name, *self._cancelled_as))
        self.grace.cancelled += 1

    def _held(self, began: int, ended: int) -> bool:
        """Whether a call held the loop all along: long, and no turn stamped while it ran."""
        return ended - began > YIELD_AFTER_NS and self._last_turn < began

    def _driven_calls(self, st: OpStats) -> DrivenCalls:
        """What this class's driven clients record into (one for all of them)."""
        if self._driven is None:
            assert isinstance(st.hist, Histogram)  # a worker records sparsely, in place
            self._driven = DrivenCalls(st, st.hist.rows(), self._early.armed, self._first_ok)
            self._driven.stopping = self._stopping
        return self._driven

    def _first_ok(self) -> None:
        """A driven call's first success: the early-failure watch is over."""
        self._early.disarm()
        if self._driven is not None:
            self._driven.watching = False

    async def _driven_loop(self) -> None:
        """A client's task when its class drives its own calls (``DrivenClient``) and
        nothing comes between them: a call through ``execute()`` (which opens the
        connection), then calls driven from the connection's callbacks
        (``DrivenClient.drive``: each success recorded there as here) until one of them
        cannot be made so; then ``execute()`` again, and so on until the stop. Counted as
        ``_call_loop`` counts, a call timed from the end of the one before it."""
        task = asyncio.current_task()
        assert task is not None
        client = await self._begin(task)
        if client is None:
            return
        assert isinstance(client, DrivenClient)
        st = self._delta.op(self._name)
        calls = self._driven_calls(st)
        clock = time.perf_counter_ns
        ended = 0  # the end of the last call that ended by itself
        t0 = clock()
        try:
            while True:
                try:
                    r = await client.execute()
                except asyncio.CancelledError:
                    self._on_call_cancelled(st)
                    raise
                except Exception as e:
                    t1 = clock()
                    self._on_call_error(st, e)
                else:
                    t1 = clock()
                    if r is False:
                        self._on_call_false(st)
                    else:
                        st.record_ok(t1 - t0)
                        if calls.watching:
                            self._first_ok()
                t0 = ended = t1
                if self._stopping:  # this call was in flight at the stop
                    self.grace.finished += 1
                    return
                try:
                    t0 = ended = await client.drive(calls, t0)
                except CancelledBetweenCalls:  # its last call, recorded, ended by itself
                    if self._stopping:  # (it was in flight at the stop)
                        self.grace.finished += 1
                    raise
                except asyncio.CancelledError:
                    self._on_call_cancelled(st)
                    raise
                except ResendCall as again:  # not ended: execute() makes it again
                    t0 = ended = again.t0  # (the end of the call before it)
                    continue
                except Exception as e:
                    t0 = ended = clock()
                    self._on_call_error(st, e)
                if self._stopping:  # the drive's last call was in flight at the stop
                    self.grace.finished += 1
                    return
                # a drive that made no call (its client's execute() failing at once,
                # say) must not hold the loop; the turn is no part of a call
                await _turn()
                if self._stopping:
                    return
                t0 = clock()
        finally:
            ended = max(ended, calls.ended)  # (a cancelled drive's last call)
            if ended > self.last_call_end_ns:
                self.last_call_end_ns = ended
            self.running -= 1
            self._tasks.discard(task)

    async def _call_loop(self) -> None:
        """A client's task, when nothing but a constant wait (or none) comes between its
        calls: the client started (``_begin``), then its calls until the stop."""
        task = asyncio.current_task()
        assert task is not None
        client = await self._begin(task)
        if client is None:
            return
        st = self._delta.op(self._name)
        assert isinstance(st.hist, Histogram)  # a worker records sparsely, in place
        rows = st.hist.rows()
        clock = time.perf_counter_ns
        wait = self._wait
        every = 1 if wait > 0 else YIELD_EVERY  # calls from one pause to the next
        yield_after = YIELD_AFTER_NS
        # (few locals: each is 8 bytes of every client's frame, waiting or not)
        # until this client's first success, the early-failure watch may still be armed;
        # a local flag, so the loop pays a fast local test per call, not an attribute read
        watching = self._early.armed
        left = every  # calls before the next pause (one that held the loop makes it 1)
        ended = 0  # the end of the last call before the latest pause
        t0 = clock()  # the start of the call, which is the end of the one before it
        try:
            while True:
                # (client.execute looked up each call: no bound method kept per client)
                try:
                    r = await client.execute()
                except asyncio.CancelledError:
                    self._on_call_cancelled(st)
                    raise
                except Exception as e:
                    t1 = clock()
                    self._on_call_error(st, e)
                    if self._held(t0, t1):
                        left = 1
                else:
                    t1 = clock()
                    dt = t1 - t0
                    if r is False:
                        self._on_call_false(st)
                    else:
                        st.ok += 1
                        st.sum_ns += dt
                        if dt > st.max_ns:
                            st.max_ns = dt
                        if dt < st.min_ns:
                            st.min_ns = dt
                        # into the histogram's tally (Histogram.rows; tests check
                        # that it agrees with bucket_index)
                        s = dt.bit_length() - 8
                        if s > 0:
                            rows[s][dt >> s] += 1
                        else:
                            rows[0][dt] += 1
                    if dt > yield_after and self._last_turn < t0:  # it held the loop
                        left = 1
                    if watching:
                        self._early.disarm()
                        watching = False
                t0 = t1
                left -= 1
                if self._stopping:  # this call was in flight at the stop
                    self.grace.finished += 1
                    return
                if not left:
                    ended, left = t1, every
                    if wait > 0:
                        self._idle.add(task)  # a stop cancels the wait at once
                        try:
                            await asyncio.sleep(wait)
                        finally:
                            self._idle.discard(task)
                    else:
                        await _turn()  # (a stop cancels no turn: it is seen here)
                        if self._stopping:
                            return
                    t0 = clock()
        finally:
            if left != every:  # a call ended since the last pause: t0 is its end
                ended = t0
            if ended > self.last_call_end_ns:
                self.last_call_end_ns = ended
            self.running -= 1
            self._tasks.discard(task)

    async def _shaped_loop(self, client: ClientProtocol,
                           windows: Sequence[tuple[float, float]]) -> None:
        """The call loop of a client with a wait form, stage windows or a share of the
        run's iterations: counted as ``_call_loop`` counts, with what comes between two
        calls decided after each (a wait or pacing, a pause until the client's next
        window, the end of its windows or of the iterations)."""
        st = self._delta.op(self._name)
        assert isinstance(st.hist, Histogram)
        rows = st.hist.rows()
        clock = time.perf_counter_ns
        loop_time = asyncio.get_running_loop().time
        budget = self._budget
        pause = self._pause
        wait = self._wait if pause is None else 0.0
        pacing = 0.0 if pause is None else pause.pacing
        low = high = 0.0
        if pause is not None and not pacing:
            low, high = pause.low, pause.high
        spans = iter(windows)
        end = next(spans)[1] if windows else math.inf  # (hatched at the first's start)
        t0_loop = self._t0_loop
        uniform = random.uniform
        yield_after = YIELD_AFTER_NS
        task = asyncio.current_task()
        assert task is not None
        watching = self._early.armed
        left = YIELD_EVERY  # calls before the next turn of the loop, when none waits
        ended = 0  # the end of the last call
        t0 = clock()
        try:
            while True:
                if budget is not None:  # (Budget.claim, inlined)
                    if budget.left <= 0:
                        budget.check()
                        return
                    budget.left -= 1
                    budget.busy += 1
                try:
                    r = await client.execute()
                except asyncio.CancelledError:
                    self._on_call_cancelled(st)
                    raise
                except Exception as e:
                    t1 = clock()
                    self._on_call_error(st, e)
                else:
                    t1 = clock()
                    if r is False:
                        self._on_call_false(st)
                    else:
                        dt = t1 - t0
                        st.ok += 1
                        st.sum_ns += dt
                        if dt > st.max_ns:
                            st.max_ns = dt
                        if dt < st.min_ns:
                            st.min_ns = dt
                        # into the histogram's tally (Histogram.rows; tests check
                        # that it agrees with bucket_index)
                        s = dt.bit_length() - 8
                        if s > 0:
                            rows[s][dt >> s] += 1
                        else:
                            rows[0][dt] += 1
                    if watching:
                        self._early.disarm()
                        watching = False
                ended = t1
                if budget is not None:  # (Budget.release, inlined)
                    budget.busy -= 1
                    if budget.left <= 0:
                        budget.check()
                if self._stopping:  # this call was in flight at the stop
                    self.grace.finished += 1
                    return
                # from the end of this call to the next one's start
                if pacing:
                    delay = pacing - (t1 - t0) / 1e9
                elif high > low:
                    delay = uniform(low, high)
                else:
                    delay = wait
                left -= 1
                if windows:
                    # when the next call would start, in seconds after T0: past this
                    # window's end, it waits for the first window with room for it
                    at = loop_time() - t0_loop + max(delay, 0.0)
                    if at >= end:
                        while at >= end:
                            span = next(spans, None)
                            if span is None:
                                return
                            start, end = span
                            at = max(at, start)
                        self.running -= 1
                        try:
                            await self._idle_sleep(task, t0_loop + at - loop_time())
                        finally:
                            self.running += 1
                        left = YIELD_EVERY
                        t0 = clock()
                        continue
                if delay > 0:
                    self._idle.add(task)  # a stop cancels the wait at once
                    try:
                        await asyncio.sleep(delay)
                    finally:
                        self._idle.discard(task)
                elif not left or (t1 - t0 > yield_after and self._last_turn < t0):
                    await _turn()  # (a stop cancels no turn: it is seen here)
                    if self._stopping:
                        return
                else:
                    t0 = t1
                    continue
                left = YIELD_EVERY
                t0 = clock()
        finally:
            if ended > self.last_call_end_ns:
                self.last_call_end_ns = ended

    async def _idle_sleep(self, task: asyncio.Task[None], seconds: float) -> None:
        """Sleep outside a call: a stop cancels it at once."""
        self._idle.add(task)
        try:
            await asyncio.sleep(max(seconds, 0.0))
        finally:
            self._idle.discard(task)

    async def stop(self, grace: float) -> None:
        """No new calls; running calls get ``grace`` seconds, then are cancelled."""
        self._stopping = True
        if self._driven is not None:
            self._driven.stopping = True
        if self._hatcher is not None:
            self._hatcher.cancel()
        for task in list(self._idle):
            task.cancel()
        pending = set(self._tasks)
        if pending:
            began = time.monotonic()
            _, still = await asyncio.wait(pending, timeout=grace)
            self.grace.seconds = time.monotonic() - began
            for task in still:
                task.cancel()
            if still:  # a client that swallows its cancellation must not hold the totals
                await asyncio.wait(still, timeout=CANCEL_WAIT)
        self._stop_ticker()

    def abort(self, reason: str) -> None:
        """Cancel every call at once."""
        self._cancelled_as = ("Cancelled", f"call cancelled by an abort: {reason}"[:300])
        self._stopping = True
        if self._driven is not None:
            self._driven.stopping = True
        if self._hatcher is not None:
            self._hatcher.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._stop_ticker()

    async def shutdown_clients(self, timeout: float) -> None:
        """``shutdown()`` on every client whose ``init_before_use`` returned, concurrently,
        within ``timeout``."""
        if not self._clients:
            return
        clients, self._clients = self._clients, []
        results = asyncio.gather(*(self._shutdown_one(c) for c in clients))
        try:
            await asyncio.wait_for(results, timeout)
        except TimeoutError:
            self._delta.add_error((self._name, "ShutdownTimeout",
                                   f"shutdown() still running after {timeout:g}s"))

    async def _shutdown_one(self, client: ClientProtocol) -> None:
        try:
            await client.shutdown()
        except Exception as e:
            self._delta.add_error(error_key(f"{self._name}.shutdown", e))


class SchedulerGroup:
    """A worker's schedulers, one per class it runs (a weighted mix runs several), as one."""

    def __init__(self, parts: Sequence[ClientScheduler]) -> None:
        self.parts = list(parts)

    @property
    def running(self) -> int:
        return sum(p.running for p in self.parts)

    @property
    def started(self) -> int:
        return sum(p.started for p in self.parts)

    @property
    def last_call_end_ns(self) -> int:
        return max((p.last_call_end_ns for p in self.parts), default=0)

    @property
    def grace(self) -> GraceReport:
        return GraceReport(seconds=max((p.grace.seconds for p in self.parts), default=0.0),
                           finished=sum(p.grace.finished for p in self.parts),
                           cancelled=sum(p.grace.cancelled for p in self.parts))

    async def stop(self, grace: float) -> None:
        await asyncio.gather(*(p.stop(grace) for p in self.parts))

    def abort(self, reason: str) -> None:
        for p in self.parts:
            p.abort(reason)

    async def shutdown_clients(self, timeout: float) -> None:
        await asyncio.gather(*(p.shutdown_clients(timeout) for p in self.parts))
