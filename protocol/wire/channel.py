"""Every ZeroMQ socket of the system, made in one place (docs/architecture.md, "Sockets").

| role | type | who binds | options |
| --- | --- | --- | --- |
| master control | ROUTER | the master, ``--bind`` (5556) | ROUTER_MANDATORY, MAXMSGSIZE |
| agent control | DEALER | dials the master | IMMEDIATE, RECONNECT_IVL(_MAX), MAXMSGSIZE |
| stats SUB | SUB | the master, a free port | RCVHWM, MAXMSGSIZE, the run id as topic |
| stats PUB | PUB | each worker dials the master | LINGER 2 s (its last delta) |

Every socket is made with LINGER 0 unless said otherwise, and with IPV6 when its host
is an IPv6 address (written ``[::1]`` in an endpoint). With keys (protocol/security.py)
the master's two sockets are CURVE servers and the agent's DEALER and its workers' PUBs
CURVE clients pinned to the master's public key; the master's ZAP handler
(loadmaster/auth.py) admits only the authorized agents' keys.

The asyncio sockets are used through ``Channel``: the asyncio socket only polls, with
a timeout, and every send and receive goes through a blocking view of the same socket
with NOBLOCK. An asyncio ``recv`` could wait for an edge of ZMQ_FD that a send on the
same socket had already consumed, for ever; a poll with a timeout cannot.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from typing import Any, TypeVar

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from protocol.security import Curve
from protocol.wire.limits import SOCKET_SLACK, STATS_SOCKET_MAX

__all__ = [
    "CONTROL_PORT",
    "HANDSHAKE_FAILED",
    "Channel",
    "EndpointError",
    "agent_control",
    "endpoint_host",
    "host_port",
    "is_loopback",
    "master_control",
    "parse_endpoint",
    "parse_host_port",
    "stats_endpoint",
    "stats_pub",
    "stats_sub",
    "tcp_endpoint",
]

CONTROL_PORT = 5556  # the master's control port when none is given
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
STATS_HWM = 100_000  # deltas queued on the master before PUB/SUB drops (counted as gaps)
PUB_LINGER_MS = 2000  # a worker's last delta gets this long to leave


class EndpointError(ValueError):
    """An address that cannot be used; the message names it."""


# -- addresses ---------------------------------------------------------------------------
def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def host_port(host: str, port: int | None = None) -> str:
    """``HOST:PORT`` as a user writes it, an IPv6 host in brackets; no port: the host."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this
    machine's loopback: only local processes reach it."""
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def tcp_endpoint(host: str, port: int | None = None) -> str:
    """``tcp://HOST:PORT`` with an IPv6 host in brackets; no port: for a random bind."""
    return f"tcp://{host_port(host, port)}"


def parse_host_port(text: str, default_port: int = CONTROL_PORT) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or a bare IPv6 address."""
    host, port = text, str(default_port)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise EndpointError(f"{text!r}: unclosed '['")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise EndpointError(f"{text!r}: expected [ADDRESS]:PORT")
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not _is_number(port) or not 0 <= int(port) <= 65535:
        raise EndpointError(f"{text!r}: the port must be a number from 0 to 65535")
    return host or "127.0.0.1", int(port)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """The host and port of ``tcp://HOST:PORT`` or ``tcp://[V6]:PORT``."""
    usage = f"{endpoint!r}: expected tcp://HOST:PORT (an IPv6 address in brackets)"
    rest = endpoint.removeprefix("tcp://")
    if rest == endpoint:
        raise EndpointError(usage)
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
        if ":" in host:
            sep = ""
    if not sep or not host or not host.isprintable() or " " in host:
        raise EndpointError(usage)
    if not _is_number(port) or not 1 <= int(port) <= 65535:
        raise EndpointError(f"{endpoint!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def endpoint_host(endpoint: str) -> str:
    """The host of ``tcp://HOST:PORT``, without brackets."""
    return parse_endpoint(endpoint)[0]


# -- the asyncio channel -----------------------------------------------------------------
class Channel:
    """An asyncio socket that only polls, and a blocking view of it for NOBLOCK I/O."""

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self._sock = sock
        self._sync: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        self._monitor: zmq.Socket[bytes] | None = None  # a blocking view of _watcher
        self._watcher: zmq.asyncio.Socket | None = None
        self.closed = False

    def watch_handshakes(self) -> None:
        """From now on, remember failed handshakes (``handshake_failures``): a peer with
        the wrong key, or without keys where they are needed, only shows there. The
        agent's DEALER watches from the start (``agent_control``)."""
        self._watcher = self._sock.get_monitor_socket(HANDSHAKE_FAILED)
        self._monitor = zmq.Socket.shadow(self._watcher.underlying)

    def handshake_failures(self) -> list[int]:
        """The handshake failures (zmq.EVENT_HANDSHAKE_FAILED_*) since the last call."""
        out: list[int] = []
        if self._monitor is None:
            return out
        with contextlib.suppress(zmq.Again):
            while True:
                out.append(int(recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"]))
        return out

    async def readable(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a message to read."""
        return bool(await self._sock.poll(max(0, int(timeout * 1000))))

    def recv(self) -> list[bytes] | None:
        """The next queued message, or None when there is none."""
        try:
            return self._sync.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return None

    def drain(self, limit: int) -> list[list[bytes]]:
        """Up to ``limit`` queued messages, without a trip through the event loop each.

        Frames are read as ``zmq.Frame`` for their ``more`` flag: ``recv_multipart``
        asks the socket for it with a ``getsockopt`` per frame, which costs as much
        again (the master drains ~30,000 frames a second from 10,000 workers)."""
        out: list[list[bytes]] = []
        recv = self._sync.recv
        try:
            for _ in range(limit):
                frame = recv(zmq.NOBLOCK, copy=False)
                frames = [frame.bytes]
                while frame.more:  # the rest of a message is queued whole with its first part
                    frame = recv(zmq.NOBLOCK, copy=False)
                    frames.append(frame.bytes)
                out.append(frames)
        except zmq.Again:
            pass
        return out

    def send(self, frames: list[bytes]) -> None:
        """Send without blocking: ``zmq.Again`` when the peer is not reading (or, on the
        agent's DEALER, not connected); EHOSTUNREACH from a ROUTER for an unknown peer."""
        self._sync.send_multipart(frames, flags=zmq.NOBLOCK)

    def close(self, linger_ms: int = 0) -> None:
        """Close; ``linger_ms`` lets queued messages leave first."""
        if not self.closed:
            self.closed = True
            if self._watcher is not None:
                with contextlib.suppress(zmq.ZMQError):
                    self._sock.disable_monitor()
                self._watcher.close(linger=0)
                self._watcher = self._monitor = None
            self._sock.close(linger=linger_ms)


# -- one factory per role ----------------------------------------------------------------
_S = TypeVar("_S", bound=zmq.Socket[Any])


@contextlib.contextmanager
def _made(ctx: zmq.Context[_S], kind: int, host: str, linger_ms: int = 0,
          curve: Curve | None = None) -> Iterator[_S]:
    """A new socket for ``host`` (IPV6 for an IPv6 address; CURVE when given), closed
    again if setting it up fails: a socket left open would hold ``ctx.term()`` for ever."""
    sock = ctx.socket(kind)
    try:
        sock.linger = linger_ms
        if ":" in host:
            sock.ipv6 = True
        if curve is not None:
            curve.apply(sock)
        yield sock
    except BaseException:
        sock.close(linger=0)
        raise


def _bind(sock: zmq.Socket[Any], host: str, port: int) -> int:
    """Bind to ``port``, or to a free one when it is 0; the port bound."""
    if port:
        sock.bind(tcp_endpoint(host, port))
        return port
    return sock.bind_to_random_port(tcp_endpoint(host))


def master_control(ctx: zmq.asyncio.Context, host: str, port: int,
                   max_message: int, curve: Curve | None = None) -> tuple[Channel, str]:
    """The master's ROUTER; the endpoint agents dial. A send to an agent that is gone
    fails at once (ROUTER_MANDATORY) instead of being dropped silently."""
    with _made(ctx, zmq.ROUTER, host, curve=curve) as sock:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message)
        port = _bind(sock, host, port)
    return Channel(sock), tcp_endpoint(host, port)


def agent_control(ctx: zmq.asyncio.Context, master: str, max_message: int,
                  backoff_max: float, curve: Curve | None = None) -> Channel:
    """An agent's DEALER dialing ``master``. libzmq redials with back-off; with
    IMMEDIATE a message is only queued on a live connection."""
    with _made(ctx, zmq.DEALER, endpoint_host(master), curve=curve) as sock:
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(backoff_max * 1000))
        sock.setsockopt(zmq.MAXMSGSIZE, max_message + SOCKET_SLACK)
        channel = Channel(sock)
        channel.watch_handshakes()  # before the first handshake can fail
        try:
            sock.connect(master)
        except BaseException:
            channel.close()  # its monitor too, or ctx.term() would wait for it
            raise
    return channel


def stats_sub(ctx: zmq.asyncio.Context, host: str, topic: bytes,
              curve: Curve | None = None) -> tuple[Channel, int]:
    """The master's SUB for one run's HELLO and DELTA messages, on a free port."""
    with _made(ctx, zmq.SUB, host, curve=curve) as sock:
        sock.rcvhwm = STATS_HWM
        sock.setsockopt(zmq.MAXMSGSIZE, STATS_SOCKET_MAX)
        sock.subscribe(topic)
        port = _bind(sock, host, 0)
    return Channel(sock), port


def stats_endpoint(master: str, stats_port: int) -> str:
    """Where workers publish: the master's host (as the agent dialed it), its stats port."""
    return tcp_endpoint(endpoint_host(master), stats_port)


def stats_pub(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str,
              curve: Curve | None = None) -> zmq.Socket[bytes]:
    """A worker's PUB (blocking: a PUB never blocks; it drops at its high-water mark)."""
    with _made(ctx, zmq.PUB, endpoint_host(endpoint), PUB_LINGER_MS, curve) as sock:
        sock.connect(endpoint)
    return sock
