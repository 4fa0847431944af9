"""The master's stats channel: a SUB socket taking every worker's HELLO and DELTA.

Live figures come from here: the running cumulative totals, one merged histogram per
second, per-agent rates and clients, and gaps in each worker's sequence numbers
(PUB/SUB drops silently at its high-water mark). The final report never sums these
deltas, except for a worker that was lost before it could send its final totals.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import zmq.asyncio

from protocol.stats import Totals
from protocol.wire.channel import Channel, stats_sub
from protocol.wire.codec import WireError, decode_stats
from protocol.wire.messages import Delta, Hello

log = logging.getLogger("loadmaster")
DRAIN_BATCH = 200
POLL_WAIT = 0.2  # seconds; a missed ZMQ_FD edge costs at most this
RATE_WINDOW = 5  # complete seconds behind "current rps"


@dataclass
class WorkerLive:
    agent: str
    worker: int
    totals: Totals = field(default_factory=Totals)
    next_seq: int = 0
    missed: int = 0
    clients: int = 0
    last_second: int = 0  # the latest second of the run it reported
    cpu_seconds: float = 0.0
    loop_lag: float = 0.0


class Aggregator:
    def __init__(self, ctx: zmq.asyncio.Context, host: str, run_id: str) -> None:
        self._ctx = ctx
        self._host = host
        self._topic = run_id.encode("ascii")
        self._channel: Channel | None = None
        self.port = 0
        self.hellos: set[tuple[str, int]] = set()
        self.workers: dict[tuple[str, int], WorkerLive] = {}
        self.totals = Totals()
        self._ok_per_second: dict[int, int] = defaultdict(int)
        self._agent_ok_per_second: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.bad_messages = 0
        self.latest_second = 0  # the latest second any delta covered

    def bind(self) -> int:
        self._channel, self.port = stats_sub(self._ctx, self._host, self._topic)
        return self.port

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    async def serve(self) -> None:
        assert self._channel is not None
        channel = self._channel
        while True:
            await channel.readable(POLL_WAIT)
            # take what is queued without a trip through the event loop each time, but
            # never so much that the control channel waits for its turn
            for frames in channel.drain(DRAIN_BATCH):
                self.handle(frames)
            await asyncio.sleep(0)

    def handle(self, frames: list[bytes]) -> None:
        try:
            msg = decode_stats(frames, self._topic)
        except WireError as e:
            self.bad_messages += 1
            if self.bad_messages <= 10:
                log.warning("dropped a bad stats message: %s", e)
            return
        if isinstance(msg, Delta):
            self._on_delta(msg)
        elif isinstance(msg, Hello):
            self.hellos.add((msg.agent, msg.worker))

    def expect(self, agent: str, worker: int) -> None:
        """Declare a planned worker: only planned workers' deltas are counted."""
        self.workers[(agent, worker)] = WorkerLive(agent, worker)

    def _on_delta(self, d: Delta) -> None:
        w = self.workers.get((d.agent, d.worker))
        if w is None:
            return  # not in this run's plan
        if d.seq < w.next_seq:
            return  # duplicate or reordered after a gap was already counted
        w.missed += d.seq - w.next_seq
        w.next_seq = d.seq + 1
        w.clients = d.clients
        w.last_second = max(w.last_second, d.second)
        w.cpu_seconds += d.cpu_seconds
        w.loop_lag = d.loop_lag
        w.totals.merge(d.totals)
        self.totals.merge(d.totals)
        ok = d.totals.ok
        if d.second > self.latest_second:
            self.latest_second = d.second
        self._ok_per_second[d.second] += ok
        self._agent_ok_per_second[d.agent][d.second] += ok

    # -- live figures -------------------------------------------------------------------
    @property
    def missed_deltas(self) -> int:
        return sum(w.missed for w in self.workers.values())

    def clients(self, agent: str | None = None) -> int:
        return sum(w.clients for w in self.workers.values() if agent in (None, w.agent))

    def current_rps(self, last: int, agent: str | None = None) -> tuple[float, int]:
        """Successes per second over the complete seconds ``last - RATE_WINDOW + 1 .. last``
        (fewer at the start), and how many seconds that is."""
        first = max(1, last - RATE_WINDOW + 1)
        if last < first:
            return 0.0, 0
        counts = self._ok_per_second if agent is None else self._agent_ok_per_second[agent]
        n = last - first + 1
        return sum(counts.get(k, 0) for k in range(first, last + 1)) / n, n
