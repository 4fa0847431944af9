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

import zmq
import zmq.asyncio

from protocol.codec import WireError, decode_stats
from protocol.limits import STATS_SOCKET_MAX
from protocol.messages import Delta, Hello
from protocol.stats import Totals

log = logging.getLogger("loadmaster")
STATS_HWM = 100_000
DRAIN_BATCH = 200
POLL_MS = 200
RATE_WINDOW = 5  # seconds of complete intervals behind "current rps"


@dataclass
class WorkerLive:
    agent: str
    worker: int
    totals: Totals = field(default_factory=Totals)
    next_seq: int = 0
    missed: int = 0
    clients: int = 0
    interval: int = 0  # the latest interval it reported
    cpu_seconds: float = 0.0
    loop_lag: float = 0.0


class Aggregator:
    def __init__(self, ctx: zmq.asyncio.Context, host: str, run_id: str) -> None:
        self._ctx = ctx
        self._host = host
        self._topic = run_id.encode("ascii")
        self._sock: zmq.asyncio.Socket | None = None
        self.port = 0
        self.hellos: set[tuple[str, int]] = set()
        self.workers: dict[tuple[str, int], WorkerLive] = {}
        self.totals = Totals()
        self._ok_per_second: dict[int, int] = defaultdict(int)
        self._agent_ok_per_second: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.bad_messages = 0
        self.latest_interval = 0  # the highest interval index any delta carried

    def bind(self) -> int:
        sock = self._sock = self._ctx.socket(zmq.SUB)
        sock.linger = 0
        sock.rcvhwm = STATS_HWM
        sock.setsockopt(zmq.MAXMSGSIZE, STATS_SOCKET_MAX)
        host = f"[{self._host}]" if ":" in self._host else self._host
        if ":" in self._host:
            sock.setsockopt(zmq.IPV6, 1)
        sock.subscribe(self._topic)
        self.port = sock.bind_to_random_port(f"tcp://{host}")
        return self.port

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def serve(self) -> None:
        assert self._sock is not None
        sock = self._sock
        # Receives go through a blocking view of the socket (NOBLOCK); the asyncio socket
        # only polls, with a timeout, so a missed ZMQ_FD edge costs at most POLL_MS.
        drain: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        while True:
            await sock.poll(POLL_MS)
            # take what is queued without a trip through the event loop each time, but
            # never so much that the control channel waits for its turn
            for _ in range(DRAIN_BATCH):
                try:
                    frames = drain.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
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
        w.interval = max(w.interval, d.interval)
        w.cpu_seconds += d.cpu_seconds
        w.loop_lag = d.loop_lag
        w.totals.merge(d.totals)
        self.totals.merge(d.totals)
        ok = d.totals.ok
        if d.interval > self.latest_interval:
            self.latest_interval = d.interval
        self._ok_per_second[d.interval] += ok
        self._agent_ok_per_second[d.agent][d.interval] += ok

    # -- live figures -------------------------------------------------------------------
    @property
    def missed_deltas(self) -> int:
        return sum(w.missed for w in self.workers.values())

    def clients(self, agent: str | None = None) -> int:
        return sum(w.clients for w in self.workers.values() if agent in (None, w.agent))

    def current_rps(self, last: int, agent: str | None = None) -> tuple[float, int]:
        """Successes per second over complete intervals ``last - RATE_WINDOW + 1 .. last``
        (fewer at the start), and how many intervals that is."""
        first = max(1, last - RATE_WINDOW + 1)
        if last < first:
            return 0.0, 0
        counts = self._ok_per_second if agent is None else self._agent_ok_per_second[agent]
        n = last - first + 1
        return sum(counts.get(k, 0) for k in range(first, last + 1)) / n, n
