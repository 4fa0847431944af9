"""The coordinator's handling of each control message (loadmaster/coordinator.py).

Without ZeroMQ sockets: a recording object stands in for the ROUTER channel; the real
sockets are covered by the e2e tests.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

import pytest
import zmq

from loadmaster.coordinator import AgentRecord, AgentState, Coordinator
from protocol.wire.codec import (
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    Message,
    Refused,
    decode,
    encode,
    pack,
)
from protocol.wire.messages import (
    AgentReady,
    ClientsFailing,
    Farewell,
    FinalAck,
    Heartbeat,
    Leaving,
    Register,
    Welcome,
    WorkerLost,
)
from tests.state_helpers import final


# -- the coordinator: one handler per control message ------------------------------------
class RouterWire:
    """Stands in for the master's ROUTER channel: what was sent to whom, decoded."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Message | Refused]] = []
        self.unreachable: set[bytes] = set()

    def send(self, frames: list[bytes]) -> None:
        identity, *rest = frames
        if identity in self.unreachable:
            raise zmq.ZMQError(errno.EHOSTUNREACH)
        msg: Message | Refused
        try:
            msg = decode(rest)
        except Refused as e:
            msg = e
        self.sent.append((identity, msg))

    def close(self, linger_ms: int = 0) -> None:
        pass

    def to(self, identity: bytes) -> list[Message | Refused]:
        return [m for i, m in self.sent if i == identity]


class Master:
    """A Coordinator on a RouterWire, counting its change notices."""

    def __init__(self, wanted: int = 2, token: str | None = None) -> None:
        self.changes = 0
        self.coord = Coordinator(None, "127.0.0.1", 0,  # type: ignore[arg-type]  # no bind
                                 wanted=wanted, token=token, on_change=self._changed)
        self.coord.stats_port = 4242
        self.wire = RouterWire()
        self.coord._channel = self.wire  # type: ignore[assignment]

    def _changed(self) -> None:
        self.changes += 1

    def receive(self, identity: bytes, msg: Message) -> None:
        self.coord._dispatch([identity, *encode(msg)])

    def register(self, identity: bytes, name: str, token: str = "") -> AgentRecord | None:
        self.receive(identity, Register(name=name, hostname="host", cores=2, workers=2,
                                        version="0.1.0", pid=1234, max_message=1 << 20,
                                        token=token))
        return self.coord.agents.get(identity)

    def agent(self, identity: bytes = b"A", workers: tuple[int, ...] = (0, 1)) -> AgentRecord:
        """A registered agent with its workers planned."""
        agent = self.register(identity, identity.decode().lower())
        assert agent is not None
        agent.worker_ids = list(workers)
        self.wire.sent.clear()
        self.changes = 0
        return agent


def test_coordinator_register_is_welcomed() -> None:
    m = Master()
    agent = m.register(b"A", "a")
    assert agent is not None
    assert (agent.name, agent.state, agent.order) == ("a", AgentState.REGISTERED, 0)
    (welcome,) = m.wire.to(b"A")
    assert isinstance(welcome, Welcome)
    assert (welcome.accepted, welcome.reason, welcome.stats_port) == (True, "", 4242)
    assert m.changes == 1
    assert m.register(b"A", "a") is agent  # a resent REGISTER: welcomed again, once known
    assert [w.accepted for w in m.wire.to(b"A")] == [True, True]  # type: ignore[union-attr]
    assert (len(m.coord.agents), m.changes) == (1, 1)


def test_coordinator_register_with_the_token() -> None:
    m = Master(token="secret")
    assert m.register(b"A", "local", token="secret") is not None


def _refused_setups() -> dict[str, tuple[Callable[[], Master], str, str]]:
    def planned() -> Master:
        m = Master()
        m.coord.run_planned = True
        return m

    def one_wanted() -> Master:
        m = Master(wanted=1)
        m.register(b"X", "x")
        return m

    def named_a() -> Master:
        m = Master(wanted=2)
        m.register(b"X", "a")
        return m

    return {
        "run planned": (planned, "a", "a run is in progress"),
        "bad token": (lambda: Master(token="secret"), "a",
                      "this master only accepts its own embedded agent"),
        "too many": (one_wanted, "a", "the master already has the 1 agent(s) it asked for"),
        "same name": (named_a, "a", "an agent named 'a' is already registered"),
    }


@pytest.mark.parametrize("case", list(_refused_setups()))
def test_coordinator_register_is_refused(case: str) -> None:
    setup, name, reason = _refused_setups()[case]
    m = setup()
    known = dict(m.coord.agents)
    assert m.register(b"A", name, token="wrong") is None
    assert m.coord.agents == known
    (welcome,) = m.wire.to(b"A")
    assert isinstance(welcome, Welcome)
    assert (welcome.accepted, welcome.reason) == (False, reason)


def test_coordinator_register_from_a_socket_already_gone_is_not_recorded() -> None:
    m = Master()
    m.wire.unreachable.add(b"A")
    assert m.register(b"A", "a") is None
    assert m.changes == 0


def test_coordinator_register_of_another_version_is_refused_readably() -> None:
    m = Master()
    reg = Register(name="a", hostname="h", cores=1, workers=1, version="9", pid=1,
                   max_message=1, token="")
    m.coord._dispatch([b"A", HEADER.pack(MAGIC, PROTOCOL_VERSION + 1, Register.TYPE),
                       pack(reg)])
    (refused,) = m.wire.to(b"A")
    assert isinstance(refused, Refused)
    assert f"version {PROTOCOL_VERSION + 1}" in str(refused)
    assert m.coord.agents == {}


def test_coordinator_heartbeat_is_echoed() -> None:
    m = Master()
    m.agent(b"A")
    m.receive(b"A", Heartbeat(sent_at=5.5, echo=0.0))
    (echo,) = m.wire.to(b"A")
    assert isinstance(echo, Heartbeat) and echo.echo == 5.5


def test_coordinator_agent_ready() -> None:
    m = Master()
    agent = m.agent(b"A")
    m.receive(b"A", AgentReady(workers=2, clock_offset=0.3, rtt=0.002, notes=["few fds"]))
    assert agent.state is AgentState.READY
    assert (agent.clock_offset, agent.rtt, agent.notes) == (0.3, 0.002, ["few fds"])
    assert m.changes == 1


def test_coordinator_final_is_kept_once_per_worker_and_always_acknowledged() -> None:
    m = Master()
    agent = m.agent(b"A", workers=(0, 1))
    m.receive(b"A", final(0, clients=5))
    m.receive(b"A", final(0, clients=6))  # resent (or wrong): the first stands
    m.receive(b"A", final(7))  # not this agent's worker
    assert agent.finals == {0: final(0, clients=5)}
    assert m.wire.to(b"A") == [FinalAck(worker=0), FinalAck(worker=0)]
    assert not agent.settled()
    m.receive(b"A", final(1))
    assert agent.settled()


def test_coordinator_worker_lost_counts_only_before_its_final() -> None:
    m = Master()
    agent = m.agent(b"A", workers=(0, 1))
    m.receive(b"A", final(0))
    m.receive(b"A", WorkerLost(worker=0, exitcode=0, detail="late"))
    m.receive(b"A", WorkerLost(worker=1, exitcode=-9, detail="killed"))
    assert agent.lost_workers == {1: "killed"}
    assert agent.settled()


def test_coordinator_clients_failing_keeps_the_first_error_of_its_own_workers() -> None:
    m = Master()
    agent = m.agent(b"A", workers=(0,))
    m.receive(b"A", ClientsFailing(worker=0, error="first"))
    m.receive(b"A", ClientsFailing(worker=0, error="second"))
    m.receive(b"A", ClientsFailing(worker=3, error="not its worker"))
    assert agent.failing == {0: "first"}


def test_coordinator_leaving_is_left_with_a_farewell() -> None:
    m = Master()
    agent = m.agent(b"A", workers=(0,))
    m.receive(b"A", Leaving(reason="agent shut down by a signal"))
    assert agent.state is AgentState.LEFT and agent.gone
    assert agent.lost_reason == "left: agent shut down by a signal"
    assert agent.lost_at is not None
    assert m.wire.to(b"A") == [Farewell(reason="recorded")]
    assert m.coord.accepted == []
    m.receive(b"A", Heartbeat(sent_at=1.0, echo=0.0))  # gone: not answered
    m.receive(b"A", final(0))  # nor counted
    assert len(m.wire.sent) == 1
    assert agent.finals == {}


def test_coordinator_an_unreachable_agent_is_lost_and_then_ignored() -> None:
    m = Master()
    agent = m.agent(b"A", workers=(0,))
    m.wire.unreachable.add(b"A")
    m.receive(b"A", Heartbeat(sent_at=1.0, echo=0.0))
    assert agent.state is AgentState.LOST and agent.lost_reason == "unreachable"
    m.wire.unreachable.clear()
    m.receive(b"A", final(0))
    assert agent.finals == {} and m.wire.sent == []


def test_coordinator_ignores_peers_that_never_registered() -> None:
    m = Master()
    for msg in (Heartbeat(sent_at=1.0, echo=0.0), AgentReady(2, 0.0, 0.0, []), final(0),
                Leaving(reason="x")):
        m.receive(b"X", msg)
    assert (m.wire.sent, m.coord.agents, m.changes) == ([], {}, 0)


@pytest.mark.parametrize("frames", [
    [b"A"],
    encode(Heartbeat(sent_at=1.0, echo=0.0)),  # no identity
    [b"A", *encode(Heartbeat(sent_at=1.0, echo=0.0)), b"extra"],
], ids=["1 frame", "2 frames", "4 frames"])
def test_coordinator_drops_a_message_of_the_wrong_frame_count(
        frames: list[bytes], caplog: pytest.LogCaptureFixture) -> None:
    m = Master()
    agent = m.agent(b"A")
    agent.last_heard = 0.0
    with caplog.at_level(logging.WARNING, logger="loadmaster"):
        m.coord._dispatch(frames)
    assert m.wire.sent == []
    assert agent.last_heard == 0.0  # not even proof of life
    assert caplog.messages == [f"dropped a control message of {len(frames)} frames"]


def test_coordinator_drops_a_bad_body() -> None:
    m = Master()
    agent = m.agent(b"A")
    agent.last_heard = 0.0
    m.coord._dispatch([b"A", HEADER.pack(MAGIC, PROTOCOL_VERSION, Heartbeat.TYPE), b"\xc1"])
    assert m.wire.sent == [] and agent.last_heard == 0.0
