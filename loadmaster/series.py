"""Every second of a run, merged over every worker of every agent.

Second k holds what the deltas of second k said (each delta covers (T0 + k - 1,
T0 + k] of its worker): per name ok, fail and the merged latency histogram (in the open
model also late and dropped calls, and the service time and schedule lag); clients;
and per agent ok, fail, the CPU its workers used and their worst loop lag. Live
figures (current rps, recent percentiles), the result file, and later the dashboard
and windowed thresholds read from here.

A second's histograms are dense (vector adds, 58 KiB a name) while deltas still
arrive for it, and are made sparse once the run is ``SETTLE`` seconds past it, or
once more than ``OPEN_MAX`` seconds are dense (a peer's second far in the future
cannot keep them all dense): 6 bytes a bucket, ~3.5 KB a name-second for a delta
of 500 buckets, ~13 MB an hour a name. A delta later than that is still merged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from protocol.histogram import DenseHistogram, Histogram
from protocol.stats import LAG, MAIN, SERVICE, Totals

__all__ = ["OPEN_MAX", "SETTLE", "AgentSecond", "Merged", "NameSecond", "Second", "Series"]

SETTLE = 10  # seconds after which a second's histograms are made sparse
OPEN_MAX = 2 * SETTLE  # seconds with dense histograms at most


@dataclass(slots=True)
class NameSecond:
    ok: int = 0
    fail: int = 0
    hist: DenseHistogram | Histogram = field(default_factory=Histogram)  # dense once it counts
    # the open model's (None in the closed model)
    late: int = 0
    dropped: int = 0
    service: DenseHistogram | Histogram | None = None
    lag: DenseHistogram | Histogram | None = None
    step: bool = False  # a named step's: out of the second's figures over every name

    def get(self, kind: int) -> DenseHistogram | Histogram:
        """Histogram ``kind`` (MAIN, SERVICE, LAG), made when the open model's first come."""
        if kind == MAIN:
            return self.hist
        if kind == SERVICE:
            if self.service is None:
                self.service = Histogram()
            return self.service
        if self.lag is None:
            self.lag = Histogram()
        return self.lag

    def put(self, kind: int, hist: DenseHistogram | Histogram) -> None:
        if kind == MAIN:
            self.hist = hist
        elif kind == SERVICE:
            self.service = hist
        else:
            self.lag = hist

    def kinds(self) -> list[int]:
        """The histograms it has."""
        return [MAIN] if self.service is None else [MAIN, SERVICE, LAG]


@dataclass(slots=True)
class AgentSecond:
    """What an agent's workers' deltas said of one second of the run."""

    ok: int = 0
    fail: int = 0
    cpu_seconds: float = 0.0
    cpu_span: int = 0  # worker-seconds those CPU seconds cover
    loop_lag: float = 0.0  # the worst of its workers


@dataclass(slots=True)
class Second:
    clients: int = 0  # summed over the deltas of this second
    ok: int = 0
    fail: int = 0
    late: int = 0  # the open model's
    dropped: int = 0
    names: dict[str, NameSecond] = field(default_factory=dict)
    agents: dict[str, AgentSecond] = field(default_factory=dict)

    def agent(self, name: str) -> AgentSecond:
        at = self.agents.get(name)
        if at is None:
            at = self.agents[name] = AgentSecond()
        return at


class Series:
    def __init__(self) -> None:
        self.seconds: dict[int, Second] = {}
        self.latest = 0  # the latest second any delta covered
        self._open: set[int] = set()  # seconds whose histograms are dense

    def at(self, second: int) -> Second:
        s = self.seconds.get(second)
        if s is None:
            s = self.seconds[second] = Second()
            self._open.add(second)
            if second > self.latest:
                self.latest = second
            self._settle(self.latest - SETTLE)
        return s

    def add(self, second: int, agent: str, clients: int, totals: Totals) -> Second:
        """Merge one worker's delta of ``second`` but its histograms, which the caller
        adds to ``histogram(second, name)`` (a batch of deltas at once); the second, for
        the caller's figures."""
        s = self.at(second)
        s.clients += clients
        at = s.agent(agent)
        for name, st in totals.ops.items():
            ns = s.names.get(name)
            if ns is None:
                ns = s.names[name] = NameSecond()
            ns.ok += st.ok
            ns.fail += st.fail
            if st.step:  # its calls are counted under their own name
                ns.step = True
                continue
            if st.sched is not None:
                ns.late += st.sched.late
                ns.dropped += st.sched.dropped
                s.late += st.sched.late
                s.dropped += st.sched.dropped
            s.ok += st.ok
            s.fail += st.fail
            at.ok += st.ok
            at.fail += st.fail
        return s

    def add_name(self, second: int, name: str, ok: int, fail: int, step: bool, late: int,
                 dropped: int, counted_ok: int, counted_fail: int) -> None:
        """Merge one name's figures of ``second`` summed over a batch of deltas (``add``'s
        but the clients and the agents', which the caller counts delta by delta): ``ok``
        and ``fail`` of every delta; ``late``, ``dropped``, ``counted_ok`` and
        ``counted_fail`` of those where ``name`` is not a named step; ``step``: it is one
        in some."""
        s = self.at(second)
        ns = s.names.get(name)
        if ns is None:
            ns = s.names[name] = NameSecond()
        ns.ok += ok
        ns.fail += fail
        if step:
            ns.step = True
        ns.late += late
        ns.dropped += dropped
        s.ok += counted_ok
        s.fail += counted_fail
        s.late += late
        s.dropped += dropped

    def histogram(self, second: int, name: str, kind: int = MAIN) -> DenseHistogram:
        """Histogram ``kind`` of ``name`` in ``second``, to add to: dense, made dense again
        if the second was settled (a late delta; it is made sparse again later)."""
        s = self.at(second)
        ns = s.names.get(name)
        if ns is None:
            ns = s.names[name] = NameSecond()
        hist = ns.get(kind)
        if isinstance(hist, Histogram):  # its first successes, or a late delta
            dense = DenseHistogram(full=True)
            dense.merge(hist)
            ns.put(kind, dense)
            self._open.add(second)
            return dense
        return hist

    def _settle(self, up_to: int) -> None:
        """Make sparse every dense second up to ``up_to``, and the oldest beyond
        OPEN_MAX."""
        done = [k for k in self._open if k <= up_to]
        if len(self._open) - len(done) > OPEN_MAX:
            done = sorted(self._open)[:len(self._open) - OPEN_MAX]
        for k in done:
            s = self.seconds[k]
            for ns in s.names.values():
                for kind in ns.kinds():
                    hist = ns.get(kind)
                    if isinstance(hist, DenseHistogram):
                        ns.put(kind, hist.sparse())
            self._open.discard(k)

    def settled(self, second: int) -> bool:
        """Whether ``second``'s histograms were made sparse."""
        return second in self.seconds and second not in self._open

    def window(self, first: int, last: int) -> list[Second]:
        """The seconds from ``first`` to ``last`` that have figures."""
        return [s for k in range(max(1, first), last + 1)
                if (s := self.seconds.get(k)) is not None]

    @staticmethod
    def merged(seconds: Iterable[Second], name: str | None = None) -> Merged:
        """One name's (or every name's but named steps') figures over ``seconds``; in the
        open model with the service time and schedule lag."""
        out = Merged(0, 0, DenseHistogram(full=True))
        for s in seconds:
            for n, ns in s.names.items():
                if n == name or (name is None and not ns.step):
                    out.ok += ns.ok
                    out.fail += ns.fail
                    out.hist.merge(ns.hist)
                    out.late += ns.late
                    out.dropped += ns.dropped
                    if ns.service is not None:
                        if out.service is None:
                            out.service = DenseHistogram(full=True)
                            out.lag = DenseHistogram(full=True)
                        assert out.lag is not None and ns.lag is not None
                        out.service.merge(ns.service)
                        out.lag.merge(ns.lag)
        return out


@dataclass(slots=True)
class Merged:
    """Seconds merged: counts and the histogram (percentiles are bucket midpoints)."""

    ok: int
    fail: int
    hist: DenseHistogram
    late: int = 0
    dropped: int = 0
    service: DenseHistogram | None = None  # the open model's, else None
    lag: DenseHistogram | None = None
