"""The master's stats channel: a SUB socket taking every worker's HELLO and DELTA.

Live figures come from here: the running cumulative totals, one merged histogram per
second, per-agent rates and clients, and gaps in each worker's sequence numbers
(PUB/SUB drops silently at its high-water mark). The final report never sums these
deltas, except for a worker that was lost before it could send its final totals.

The deltas also carry the load generator's own health: the CPU each worker used and
the worst lag of its event loop, counted while the worker runs clients. A worker is
saturated once it used over ``max_cpu`` of a core, or its loop lagged over
``max_loop_lag``, or in the open model it fell over ``max_behind_schedule`` behind its
schedule, for ``for`` seconds in a row (``generator:``, by default 90%, 20 ms, 100 ms and
3 s: ``SATURATION``); from then on its
figures measure the generator as much as the target. Only live deltas carry these
figures (final totals do not).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

import numpy as np
import zmq.asyncio

from loadmaster.config_values import GeneratorRule
from loadmaster.series import AgentSecond, Merged, Second, Series
from protocol.histogram import (
    Counts,
    DenseHistogram,
    Histogram,
    HistogramArena,
    Indexes,
    Unpacked,
    summed,
)
from protocol.security import Curve
from protocol.stats import OpStats, Totals
from protocol.wire.channel import Channel, stats_sub
from protocol.wire.codec import WireError, decode_stats
from protocol.wire.deltas import (
    DELTA_HEADER,
    DROPPED,
    FAIL,
    LATE,
    MAIN_HIST,
    MAX,
    MIN,
    NAME,
    OK,
    OPEN,
    RECEIVED,
    SCHED_HIST,
    SENT,
    STATUSES,
    STEP,
    SUM,
    DeltaBatch,
    Row,
    decode_deltas,
)
from protocol.wire.messages import MAX_SECOND, Hello

log = logging.getLogger("loadmaster")
DRAIN_BATCH = 200
POLL_WAIT = 0.2  # seconds; a missed ZMQ_FD edge costs at most this
RATE_WINDOW = 5  # complete seconds behind "current rps"
SECOND_SLACK = 30.0  # how far ahead of T0 + elapsed a delta's second may be (clock skew)
# A worker sends about a delta a second: a sequence number further ahead than the run's
# seconds and this slack is not one of its own; nor are more calls in one delta than a
# worker's loop can end in a second (a bare loop of no-op awaits does about a million).
SEQ_SLACK = 60
MAX_DELTA_CALLS = 20_000_000
# Nor more operation names in a run than this (each costs the master a histogram per
# second), a worker's loop lag or CPU time over an hour in a second, or more clients
# than a worker's open files allow.
MAX_NAMES = 1000
MAX_DELTA_SECONDS = 3600.0
MAX_SCHED_LAG = float(MAX_SECOND)  # behind its schedule: no further than a run is long
MAX_CLIENTS = 10_000_000
GC_YOUNG = 50_000  # see ``few_collections``
_SECOND = 3  # a delta's second among its fields
# a row's figures (``protocol.wire.deltas.Row``), for sums over many rows at once
_OK, _FAIL, _SUM, _MIN, _MAX, _SENT, _RECEIVED, _LATE, _DROPPED, _OPEN, _STEP, _MAIN_HIST = (
    itemgetter(i) for i in (OK, FAIL, SUM, MIN, MAX, SENT, RECEIVED, LATE, DROPPED, OPEN, STEP,
                            MAIN_HIST))
# The saturation rule's defaults (config: ``generator:``)
SATURATION = GeneratorRule()
SATURATION_CPU = SATURATION.max_cpu  # of one core, per second
SATURATION_LAG = SATURATION.max_loop_lag  # seconds of event-loop lag
SATURATION_SECONDS = SATURATION.seconds  # in a row


@dataclass
class WorkerLive:
    """What one worker's live deltas said, and its sequence and generator figures.

    ``counts`` holds everything but the latency histograms, which are in ``arena``
    (``slots``: name -> the slot of its MAIN histogram) when the aggregator keeps them;
    ``totals()`` puts them together. In the open model only the corrected latency is
    kept per worker (its service time and lag are in the run's totals and the series
    only): a lost worker's estimate counts its late and dropped calls, but not its
    service times and lags."""

    agent: str
    worker: int
    counts: Totals = field(default_factory=Totals)
    arena: HistogramArena | None = None
    slots: dict[str, int] = field(default_factory=dict)
    next_seq: int = 0
    dropped: int = 0  # implausible deltas since the last one taken: not lost, not counted
    missed: int = 0
    clients: int = 0
    last_second: int = 0  # the latest second of the run it reported
    # the generator's figures, from the deltas received while it ran clients
    cpu_seconds: float = 0.0
    cpu_span: int = 0  # the seconds of the run those deltas cover
    loop_lag: float = 0.0  # the worst, seconds
    behind: float = 0.0  # the open model: the furthest behind its schedule, seconds
    counted: int = 0  # the second of the latest delta counted; 0: none, or a gap since
    hot_seconds: int = 0  # seconds in a row over a saturation threshold, up to ``counted``
    hot_from: int = 0  # the first second of that streak
    saturated_from: int = 0  # the first second of the first streak that saturated it; 0: never
    saturated_by: tuple[str, ...] = ()  # the rule's parts that streak met
    hot_by: set[str] = field(default_factory=set)  # the parts the current streak met
    rule: GeneratorRule = SATURATION  # when it is saturated

    def totals(self) -> Totals:
        """Everything its live deltas said, histograms included."""
        out = Totals(dense=True)
        out.merge(self.counts)
        if self.arena is not None:
            for name, slot in self.slots.items():
                _dense(out.op(name).hist).add(*self.arena.packed(slot))
        return out

    def slot(self, name: str) -> int:
        """The arena slot of its MAIN histogram of ``name``."""
        slot = self.slots.get(name)
        if slot is None:
            assert self.arena is not None
            slot = self.slots[name] = self.arena.new()
        return slot

    @property
    def cpu(self) -> float | None:
        """The share of one core it used over the seconds its deltas cover."""
        return generator_figures([self])[0]

    def observe(self, second: int, contiguous: bool, clients: int, cpu_seconds: float,
                loop_lag: float, behind: float = 0.0) -> int:
        """Count one delta's CPU, loop lag and lag behind the schedule; judge saturation.

        ``contiguous``: no delta was lost before this one. The worker labels a delta it
        publishes late (its loop was blocked past a whole second) with the second it was
        due, then skips to the current second: the seconds skipped belong to that late
        delta. Returns how many were credited to it now.
        """
        skipped = 0
        if not contiguous:
            self.counted = self.hot_seconds = 0  # what the lost deltas said is unknown
        elif self.counted and second > self.counted + 1:
            skipped = second - self.counted - 1
            self.cpu_span += skipped
            if self.hot_seconds:
                self.hot_seconds += skipped
                self._saturate()
        if not clients:  # before its clients start, or after they stop: not the load's
            self.counted = self.hot_seconds = 0
            return skipped
        self.counted = second
        self.cpu_seconds += cpu_seconds
        self.cpu_span += 1
        if loop_lag > self.loop_lag:  # (the master calls this for every delta)
            self.loop_lag = loop_lag
        if behind > self.behind:
            self.behind = behind
        rule = self.rule
        if cpu_seconds > rule.max_cpu or loop_lag > rule.max_loop_lag \
                or behind > rule.max_behind_schedule:
            if not self.hot_seconds:
                self.hot_from = second
                self.hot_by.clear()
            self.hot_by.update(name for name, hot in (
                ("cpu", cpu_seconds > rule.max_cpu), ("loop lag", loop_lag > rule.max_loop_lag),
                ("behind schedule", behind > rule.max_behind_schedule)) if hot)
            self.hot_seconds += 1
            self._saturate()
        elif self.hot_seconds:
            self.hot_seconds = 0
        return skipped

    def _saturate(self) -> None:
        if self.hot_seconds >= self.rule.seconds and not self.saturated_from:
            self.saturated_from = self.hot_from
            self.saturated_by = tuple(sorted(self.hot_by))


class Aggregator:
    def __init__(self, ctx: zmq.asyncio.Context, host: str, run_id: str,
                 curve: Curve | None = None, saturation: GeneratorRule = SATURATION) -> None:
        self._ctx = ctx
        self.saturation = saturation
        self._curve = curve
        self._host = host
        self._topic = run_id.encode("ascii")
        self._channel: Channel | None = None
        self.port = 0
        self.hellos: set[tuple[str, int]] = set()
        self.workers: dict[tuple[str, int], WorkerLive] = {}
        self.totals = Totals(full=True)
        self.series = Series()
        self._arena = HistogramArena()  # the workers' histograms
        self.bad_messages = 0
        self.implausible = 0  # deltas dropped as impossible for a real worker
        self.t0: float | None = None  # wall clock of T0, once the run started

    def bind(self) -> int:
        self._channel, self.port = stats_sub(self._ctx, self._host, self._topic, self._curve)
        return self.port

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    async def serve(self) -> None:
        assert self._channel is not None
        channel = self._channel
        with few_collections():
            while True:
                await channel.readable(POLL_WAIT)
                # take what is queued without a trip through the event loop each time, but
                # never so much that the control channel waits for its turn
                self.handle_batch(channel.drain(DRAIN_BATCH))
                await asyncio.sleep(0)

    def handle(self, frames: list[bytes]) -> None:
        self.handle_batch([frames])

    def handle_batch(self, messages: list[list[bytes]]) -> None:
        """Take queued stats messages: the deltas among them decoded and merged together."""
        bodies = []
        for frames in messages:
            if len(frames) == 3 and frames[0] == self._topic and frames[1] == DELTA_HEADER:
                bodies.append(frames[2])
                continue
            try:
                msg = decode_stats(frames, self._topic)
            except WireError as e:
                self._bad(str(e))
                continue
            # (a delta has DELTA_HEADER: it cannot come here); planned workers only, or a
            # stream of made-up names would grow this set for the whole run
            if isinstance(msg, Hello) and (msg.agent, msg.worker) in self.workers:
                self.hellos.add((msg.agent, msg.worker))
        if bodies:
            self._on_deltas(decode_deltas(bodies))

    def _bad(self, what: str) -> None:
        self.bad_messages += 1
        if self.bad_messages <= 10:
            log.warning("dropped a bad stats message: %s", what)

    def expect(self, agent: str, worker: int) -> None:
        """Declare a planned worker: only planned workers' deltas are counted."""
        self.workers[(agent, worker)] = WorkerLive(agent, worker, arena=self._arena,
                                                   rule=self.saturation)

    def _on_deltas(self, batch: DeltaBatch) -> None:
        """Merge a batch: each worker's counters row by row (a worker has one delta in a
        batch: nothing to sum), the series' and the run's once per second and name, each
        figure summed over the batch's rows at once (``_count``); histograms with one
        vector add for every worker's, and one per second, name and kind into a sum that
        is added to the series and to the run's totals."""
        for e in batch.errors:
            self._bad(e)
        hists = batch.hists
        lows, highs = hists.lows, hists.highs
        taken: list[int] = []  # the MAIN histograms of the deltas merged, in batch order
        slots: list[int] = []  # the arena slot of each
        offsets: list[int] = []  # and its offset there
        arena = self._arena
        moves = arena.moves
        # (second, name): its rows merged, in batch order
        seconds: dict[tuple[int, str], list[Row]] = {}
        # a delta's second may not be far ahead of the run's clock (a forged one would hold
        # the live figures back)
        horizon = SECOND_SLACK if self.t0 is None else time.time() - self.t0 + SECOND_SLACK
        totals = self.totals
        known = totals.ops
        rows, first = batch.rows, batch.first
        for k, fields in enumerate(batch.fields):
            lo, hi = first[k], first[k + 1]
            w = self._take(fields, rows, lo, hi, horizon)
            if w is None:
                continue
            mine = w.counts
            mine_ops = mine.ops
            second = fields[_SECOND]
            for i in range(lo, hi):
                row = rows[i]
                name = row[NAME]
                # the worker's own counters (``OpStats.merge_counts``, inlined)
                st = mine_ops.get(name)
                if st is None:
                    st = mine.op(name)
                st.ok += row[OK]
                st.fail += row[FAIL]
                st.sum_ns += row[SUM]
                if row[MIN] < st.min_ns:
                    st.min_ns = row[MIN]
                if row[MAX] > st.max_ns:
                    st.max_ns = row[MAX]
                st.sent += row[SENT]
                st.received += row[RECEIVED]
                if row[STEP]:
                    st.step = True
                if row[OPEN]:
                    sched = st.sched
                    if sched is None:
                        sched = st.schedule()
                    sched.late += row[LATE]
                    sched.dropped += row[DROPPED]
                if name not in known:  # the run's names in the order they came
                    totals.op(name)
                if row[STATUSES]:  # (in batch order, as every status code came)
                    _add_statuses(st, row)
                    _add_statuses(known[name], row)
                group = seconds.get((second, name))
                if group is None:
                    seconds[second, name] = [row]
                else:
                    group.append(row)
                j = row[MAIN_HIST]
                if highs[j]:  # not empty; a worker's open-model histograms are not kept
                    slot = w.slot(name)
                    taken.append(j)
                    slots.append(slot)
                    offsets.append(arena.offset(slot, lows[j], highs[j]))
            errs = batch.errors_of[k]
            if errs:
                for key, count in errs.items():
                    mine.add_error(key, count)
                    totals.add_error(key, count)
        if taken:
            if arena.moves != moves:  # a slot moved, or all did: every range is in place now
                offsets = [arena.offset(slot, lows[j], highs[j])
                           for slot, j in zip(slots, taken, strict=True)]
            indexes, counts = _gather(hists, taken)
            lengths = [hists.starts[j + 1] - hists.starts[j] for j in taken]
            arena.add(indexes + np.repeat(np.array(offsets, np.intp), lengths), counts)
        for (second, name), group in seconds.items():
            st = known[name]
            self._count(second, name, st, group)
            # each (second, name, kind)'s histograms summed once, then added to the series
            # and the run's totals (both over every bucket): one indexed add, not two
            for kind, part in enumerate(_by_kind(batch, group)):
                indexes, counts = _gather(hists, part)
                if indexes.size:
                    batch_sum = summed(indexes, counts)
                    self.series.histogram(second, name, kind).add_full(batch_sum)
                    _dense(st.histogram(kind)).add_full(batch_sum)

    def _count(self, second: int, name: str, st: OpStats, rows: list[Row]) -> None:
        """The counters of one name's rows of one second merged (but status codes) into
        the run's totals and the series: each figure summed over the rows at once."""
        ok, fail = sum(map(_OK, rows)), sum(map(_FAIL, rows))
        st.ok += ok
        st.fail += fail
        st.sum_ns += sum(map(_SUM, rows))
        mn, mx = min(map(_MIN, rows)), max(map(_MAX, rows))
        if mn < st.min_ns:
            st.min_ns = mn
        if mx > st.max_ns:
            st.max_ns = mx
        st.sent += sum(map(_SENT, rows))
        st.received += sum(map(_RECEIVED, rows))
        late = dropped = 0
        if any(map(_OPEN, rows)):
            late, dropped = sum(map(_LATE, rows)), sum(map(_DROPPED, rows))
            sched = st.schedule()
            sched.late += late
            sched.dropped += dropped
        step = any(map(_STEP, rows))
        if not step:
            self.series.add_name(second, name, ok, fail, False, late, dropped, ok, fail)
            return
        st.step = True
        counted = [row for row in rows if not row[STEP]]
        self.series.add_name(second, name, ok, fail, True, sum(map(_LATE, counted)),
                             sum(map(_DROPPED, counted)), sum(map(_OK, counted)),
                             sum(map(_FAIL, counted)))

    def _take(self, fields: list[Any], rows: list[Row], lo: int, hi: int,
              horizon: float) -> WorkerLive | None:
        """Count a delta's sequence, clients and the generator's figures into its worker
        and the series (``fields``: its checked wire fields; its operations are
        ``rows[lo:hi]``); None (and nothing counted) when it is not to be merged."""
        agent, worker, seq, second, clients, _, cpu, lag, behind = fields
        w = self.workers.get((agent, worker))
        if w is None:
            return None  # not in this run's plan
        if seq < w.next_seq:
            return None  # duplicate or reordered after a gap was already counted
        if second > horizon:
            self._bad(f"a delta of agent {agent}, worker {worker} for second {second}, "
                      f"far ahead of the run's clock")
            return None
        lost = seq - w.next_seq
        calls = 0
        new_names = 0
        ok = fail = 0  # of the names that are not named steps
        known = self.totals.ops
        for i in range(lo, hi):
            row = rows[i]
            calls += row[OK] + row[FAIL] + row[DROPPED]
            if row[NAME] not in known:
                new_names += 1
            if not row[STEP]:
                ok += row[OK]
                fail += row[FAIL]
        far = lost > (0 if self.t0 is None else horizon) + SEQ_SLACK
        if far or calls > MAX_DELTA_CALLS or len(known) + new_names > MAX_NAMES \
                or lag > MAX_DELTA_SECONDS or cpu > MAX_DELTA_SECONDS \
                or behind > MAX_SCHED_LAG \
                or clients > MAX_CLIENTS:
            self.implausible += 1
            self._bad(f"an implausible delta for agent {agent}, worker {worker} (sequence "
                      f"{seq} where {w.next_seq} was next, {calls} calls, {new_names} new "
                      f"name(s) beyond {len(known)}, {clients} clients, loop lag "
                      f"{lag:.3g} s, cpu {cpu:.3g} s, behind schedule "
                      f"{behind:.3g} s): dropped")
            if not far:  # not counted again as lost (the sequence stays: a real delta of
                w.dropped += 1  # that number may still come, if this one was forged)
            return None
        lost = max(0, lost - w.dropped)
        w.dropped = 0
        w.missed += lost
        w.next_seq = seq + 1
        w.clients = clients
        if second > w.last_second:
            w.last_second = second
        series = self.series
        s = series.at(second)
        s.clients += clients
        at = s.agent(agent)
        at.ok += ok
        at.fail += fail
        late = w.counted  # (the codec refused negative, NaN, infinite figures)
        skipped = w.observe(second, lost == 0, clients, cpu, lag, behind)
        if skipped:
            series.at(late).agent(agent).cpu_span += skipped
        if clients:
            at.cpu_seconds += cpu
            at.cpu_span += 1
            if lag > at.loop_lag:
                at.loop_lag = lag
        return w

    # -- live figures -------------------------------------------------------------------
    @property
    def missed_deltas(self) -> int:
        return sum(w.missed for w in self.workers.values())

    def clients(self, agent: str | None = None) -> int:
        return sum(w.clients for w in self.workers.values() if agent in (None, w.agent))

    def current_rps(self, last: int, agent: str | None = None) -> tuple[float, int]:
        """Successes per second over the complete seconds ``last - RATE_WINDOW + 1 .. last``
        (fewer at the start), and how many seconds that is."""
        n = len(_window(last))
        if not n:
            return 0.0, 0
        if agent is None:
            return sum(s.ok for s in self._recent_seconds(last)) / n, n
        return sum(a.ok for a in self._agent_window(last, agent)) / n, n

    def generator_load(self, last: int, agent: str) -> tuple[float | None, float | None]:
        """The agent's workers' share of a core each, and their worst loop lag (seconds),
        over the complete seconds behind current rps; None without a delta there."""
        return generator_figures(self._agent_window(last, agent))

    def saturated(self, agent: str) -> bool:
        return any(w.saturated_from for w in self.workers.values() if w.agent == agent)

    def recent(self, last: int) -> Merged:
        """Every name merged over the complete seconds behind current rps."""
        return Series.merged(self._recent_seconds(last))

    @property
    def latest_second(self) -> int:
        """The latest second any delta covered."""
        return self.series.latest

    def _recent_seconds(self, last: int) -> list[Second]:
        return self.series.window(_window(last).start, last)

    def _agent_window(self, last: int, agent: str) -> list[AgentSecond]:
        return [a for s in self._recent_seconds(last)
                if (a := s.agents.get(agent)) is not None]


def _dense(hist: Histogram | DenseHistogram) -> DenseHistogram:
    """A histogram of an operation of a dense ``Totals``."""
    assert isinstance(hist, DenseHistogram)
    return hist


def _gather(hists: Unpacked, which: list[int]) -> tuple[Indexes, Counts]:
    """The entries of histograms ``which`` (increasing) of a batch: slices when they
    follow each other (one name, every delta taken), else a copy."""
    starts = hists.starts
    first = starts[which[0]]
    if which[-1] - which[0] == len(which) - 1:  # consecutive numbers: adjacent spans
        end = starts[which[-1] + 1]
        return hists.indexes[first:end], hists.counts[first:end]
    end = first
    for j in which:
        if starts[j] != end:
            return (np.concatenate([hists.indexes[starts[j]:starts[j + 1]] for j in which]),
                    np.concatenate([hists.counts[starts[j]:starts[j + 1]] for j in which]))
        end = starts[j + 1]
    return hists.indexes[first:end], hists.counts[first:end]


@contextlib.contextmanager
def few_collections() -> Iterator[None]:
    """Python's cyclic garbage collector rarely, while the master takes deltas.

    Each delta makes and frees a hundred small containers (refcounting frees them; they
    hold no cycles), and the collector's default, a collection every 700 more of them
    than were freed, ran often enough to scan the run's long-lived objects (every
    worker's figures, the series) again and again: at 10,000 workers, a tenth of the
    master's CPU in the closed model and a fifth in the open one (measured with
    ``bench/aggregation.py --open``). What exists when the run starts is frozen out of
    the scans, and the youngest generation is collected every ``GC_YOUNG`` containers
    instead. Both are set back when the aggregator stops."""
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if not frozen:  # (else someone else froze first: theirs stays frozen, and ours)
            gc.unfreeze()


def _by_kind(batch: DeltaBatch, rows: list[Row]) -> list[list[int]]:
    """The numbers of rows' histograms by kind (their MAIN, then their SERVICE and LAG if
    any has them), for rows of either model (a name has one; a forged delta may differ)."""
    mains = list(map(_MAIN_HIST, rows))
    if not any(map(_OPEN, rows)):
        return [mains]
    services = [batch.mains + row[SCHED_HIST] for row in rows if row[OPEN]]
    return [mains, services, [j + batch.opens for j in services]]


def _add_statuses(st: OpStats, row: Row) -> None:
    codes = row[STATUSES]
    assert codes is not None
    statuses = st.statuses
    for code, n in codes.items():
        statuses[code] = statuses.get(code, 0) + n


def _window(last: int) -> range:
    """The complete seconds behind current rps: the last RATE_WINDOW up to ``last``."""
    return range(max(1, last - RATE_WINDOW + 1), last + 1)


class GeneratorFigures(Protocol):
    cpu_seconds: float
    cpu_span: int
    loop_lag: float


def generator_figures(parts: Iterable[GeneratorFigures]) -> tuple[float | None, float | None]:
    """The share of a core each that ``parts`` used over the seconds they cover, and their
    worst loop lag in seconds; None for both when they cover no second."""
    parts = list(parts)
    span = sum(p.cpu_span for p in parts)
    if not span:
        return None, None
    return sum(p.cpu_seconds for p in parts) / span, max(p.loop_lag for p in parts)
