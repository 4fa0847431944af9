"""The master's control channel: a ROUTER socket, one record per agent, liveness.

Each agent dials in, REGISTERs, and heartbeats every second; the master answers every
heartbeat at once with its own clock (agents estimate their offset from it). An agent
not heard from for ``MISSED_BEATS`` seconds, or one the ROUTER cannot reach
(EHOSTUNREACH, or EAGAIN from a peer that stopped reading), is lost.

The socket has ROUTER_MANDATORY set and every send is NOBLOCK: a blocking send to a
dead peer would stall every later send.
"""

from __future__ import annotations

import errno
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import zmq
import zmq.asyncio

from protocol.security import Curve
from protocol.wire.channel import Channel, master_control
from protocol.wire.codec import (
    Message,
    VersionMismatch,
    WireError,
    decode,
    encode,
    encode_refused,
)
from protocol.wire.limits import FINAL_MAX
from protocol.wire.messages import (
    HEARTBEAT,
    MISSED_BEATS,
    AgentReady,
    ClientsFailing,
    Farewell,
    Final,
    FinalAck,
    Heartbeat,
    JobFailed,
    JobRefused,
    Leaving,
    Register,
    RunDoneAck,
    Welcome,
    WorkerLost,
)

log = logging.getLogger("loadmaster")
DRAIN_BATCH = 1000
CONTROL_LIMIT = FINAL_MAX  # the largest message an agent sends; MAXMSGSIZE guards the socket
BAD_LOGGED = 20  # bad control messages logged one by one
BAD_EVERY = 1000  # then one in this many


class AgentState(Enum):
    REGISTERED = "registered"
    READY = "ready"
    LOST = "lost"
    LEFT = "left"


@dataclass
class AgentRecord:
    identity: bytes
    info: Register
    order: int
    state: AgentState = AgentState.REGISTERED
    last_heard: float = 0.0
    lost_at: float | None = None  # wall clock
    lost_reason: str = ""
    worker_ids: list[int] = field(default_factory=list)
    finals: dict[int, Final] = field(default_factory=dict)
    lost_workers: dict[int, str] = field(default_factory=dict)
    clock_offset: float = 0.0  # master clock - agent clock, the agent's estimate
    rtt: float = 0.0
    notes: list[str] = field(default_factory=list)  # from its READY, for the user
    failing: dict[int, str] = field(default_factory=dict)  # CLIENTS_FAILING per worker
    done_acked: bool = False  # it read RUN_DONE

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def gone(self) -> bool:
        return self.state in (AgentState.LOST, AgentState.LEFT)

    def settled(self) -> bool:
        """Nothing more to wait for from this agent."""
        return self.gone or all(w in self.finals or w in self.lost_workers
                                for w in self.worker_ids)


class Coordinator:
    def __init__(self, ctx: zmq.asyncio.Context, host: str, port: int, wanted: int,
                 token: str | None, on_change: Callable[[], None],
                 curve: Curve | None = None) -> None:
        self._ctx = ctx
        self._curve = curve
        self._host = host
        self._port = port
        self._wanted = wanted
        self._token = token
        self._on_change = on_change
        self._channel: Channel | None = None
        self.agents: dict[bytes, AgentRecord] = {}
        self.stats_port = 0
        self.run_planned = False  # from then on no agent joins this master
        self.job_failures: list[tuple[str, JobFailed]] = []
        self.job_refusals: list[tuple[str, JobRefused]] = []
        self.bad_messages = 0  # dropped: undecodable, too large, or of another version

    # -- socket -------------------------------------------------------------------------
    def bind(self) -> str:
        self._channel, endpoint = master_control(self._ctx, self._host, self._port,
                                                 CONTROL_LIMIT, self._curve)
        return endpoint

    def close(self, linger_ms: int = 0) -> None:
        """Close; ``linger_ms`` lets queued messages (RUN_DONE, acks) leave first."""
        if self._channel is not None:
            self._channel.close(linger_ms)
            self._channel = None

    def send(self, agent: AgentRecord, msg: Message | list[bytes]) -> bool:
        """Send a message (or its encoded frames) without blocking; an unreachable or
        stalled agent is marked lost."""
        if self._channel is None or agent.gone:
            return False
        frames = msg if isinstance(msg, list) else encode(msg)
        try:
            self._channel.send([agent.identity, *frames])
            return True
        except zmq.ZMQError as e:
            if e.errno in (errno.EHOSTUNREACH, zmq.EAGAIN):
                self._mark_lost(agent, "unreachable" if e.errno == errno.EHOSTUNREACH
                                else "not reading its messages")
                return False
            raise

    def broadcast(self, msg: Message, agents: list[AgentRecord]) -> None:
        for agent in agents:
            self.send(agent, msg)

    # -- agents -------------------------------------------------------------------------
    @property
    def accepted(self) -> list[AgentRecord]:
        """Registered agents not lost or gone, in registration order."""
        return sorted((a for a in self.agents.values() if not a.gone), key=lambda a: a.order)

    def _mark_lost(self, agent: AgentRecord, why: str) -> None:
        if agent.gone:
            return
        agent.state = AgentState.LOST
        agent.lost_at = time.time()
        agent.lost_reason = why
        log.warning("agent %s lost: %s", agent.name, why)
        self._on_change()

    def check_liveness(self) -> None:
        now = time.monotonic()
        for agent in self.agents.values():
            if not agent.gone and now - agent.last_heard > HEARTBEAT * MISSED_BEATS:
                self._mark_lost(agent, f"no heartbeat for {now - agent.last_heard:.1f}s")

    async def serve(self) -> None:
        """Receive and handle control messages until cancelled."""
        assert self._channel is not None
        while True:
            if await self._channel.readable(HEARTBEAT / 2):
                # everything queued first: after a stall, heartbeats waiting in the queue
                # prove their agents alive before liveness is judged
                for frames in self._channel.drain(DRAIN_BATCH):
                    self._dispatch(frames)
            self.check_liveness()

    def _dispatch(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            log.warning("dropped a control message of %d frames", len(frames))
            return
        identity = frames[0]
        agent = self.agents.get(identity)
        try:
            msg = decode(frames[1:], CONTROL_LIMIT)
        except VersionMismatch as e:
            who = agent.name if agent else f"peer {identity.hex()}"
            text = (f"agent speaks protocol version {e.theirs}, master speaks {e.ours}: "
                    f"upgrade one of them")
            if self._complain():
                log.error("refused %s: %s", who, text)
            self._raw_send(identity, encode_refused(text))
            return
        except WireError as e:
            who = agent.name if agent else f"peer {identity.hex()}"
            if self._complain():
                log.warning("dropped a bad control message from %s: %s", who, e)
            return
        if isinstance(msg, Register):
            self._on_register(identity, msg)
            return
        if agent is None:
            return  # not registered (e.g. an agent of a previous master): ignore
        if agent.gone:
            return  # a lost agent counts up to its last live delta, whatever it sends later
        agent.last_heard = time.monotonic()
        if isinstance(msg, Heartbeat):
            self.send(agent, Heartbeat(sent_at=time.time(), echo=msg.sent_at))
        elif isinstance(msg, AgentReady):
            agent.state = AgentState.READY
            agent.clock_offset, agent.rtt = msg.clock_offset, msg.rtt
            agent.notes = msg.notes
            self._on_change()
        elif isinstance(msg, JobFailed):
            self.job_failures.append((agent.name, msg))
            self._on_change()
        elif isinstance(msg, JobRefused):
            self.job_refusals.append((agent.name, msg))
            self._on_change()
        elif isinstance(msg, ClientsFailing):
            if msg.worker in agent.worker_ids:
                agent.failing.setdefault(msg.worker, msg.error)
                self._on_change()
        elif isinstance(msg, RunDoneAck):
            agent.done_acked = True
            self._on_change()
        elif isinstance(msg, Final):
            if msg.worker in agent.worker_ids:
                agent.finals.setdefault(msg.worker, msg)  # de-duplicated by (agent, worker)
                self.send(agent, FinalAck(worker=msg.worker))
                self._on_change()
        elif isinstance(msg, WorkerLost):
            if msg.worker in agent.worker_ids and msg.worker not in agent.finals:
                agent.lost_workers[msg.worker] = msg.detail
                log.warning("agent %s: worker %d lost: %s", agent.name, msg.worker, msg.detail)
                self._on_change()
        elif isinstance(msg, Leaving):
            log.warning("agent %s left: %s", agent.name, msg.reason)
            self.send(agent, Farewell(reason="recorded"))
            agent.state = AgentState.LEFT
            agent.lost_at = time.time()
            agent.lost_reason = f"left: {msg.reason}"
            self._on_change()

    def _complain(self) -> bool:
        """Whether to log one more bad message: the first BAD_LOGGED, then one in
        BAD_EVERY (a peer sending garbage must not flood the log)."""
        self.bad_messages += 1
        n = self.bad_messages
        if n == BAD_LOGGED + 1:
            log.warning("%d bad control messages: from now on one in %d is logged", n - 1,
                        BAD_EVERY)
        return n <= BAD_LOGGED or n % BAD_EVERY == 0

    def _raw_send(self, identity: bytes, frames: list[bytes]) -> bool:
        """Send to a peer that may not be an agent (yet); False when it is unreachable."""
        assert self._channel is not None
        try:
            self._channel.send([identity, *frames])
            return True
        except zmq.ZMQError:
            return False

    def _on_register(self, identity: bytes, reg: Register) -> None:
        known = self.agents.get(identity)
        if known is not None:  # a resent REGISTER
            self.send(known, self._welcome(True, ""))
            return
        reason = ""
        if self.run_planned:
            reason = "a run is in progress"
        elif self._token is not None and not secrets.compare_digest(reg.token, self._token):
            reason = "this master only accepts its own embedded agent"
        elif len(self.accepted) >= self._wanted:
            reason = f"the master already has the {self._wanted} agent(s) it asked for"
        elif any(a.name == reg.name for a in self.accepted):
            reason = f"an agent named {reg.name!r} is already registered"
        if reason:
            log.info("agent %s (%s) told to stay idle: %s", reg.name, reg.hostname, reason)
            self._raw_send(identity, encode(self._welcome(False, reason)))  # and nothing more
            return
        if not self._raw_send(identity, encode(self._welcome(True, ""))):
            return  # its socket is already gone (a REGISTER resent from a closed socket)
        agent = AgentRecord(identity=identity, info=reg, order=len(self.agents),
                            last_heard=time.monotonic())
        self.agents[identity] = agent
        log.info("agent %s registered (host %s, %d worker(s), version %s, pid %d)",
                 reg.name, reg.hostname, reg.workers, reg.version, reg.pid)
        self._on_change()

    def _welcome(self, accepted: bool, reason: str) -> Welcome:
        """Where to publish goes to accepted agents only."""
        return Welcome(accepted=accepted, reason=reason,
                       stats_port=self.stats_port if accepted else 0, master_time=time.time())

