"""protocol.wire.channel: addresses, and every socket role on real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import zmq
import zmq.asyncio

from protocol.wire.channel import (
    CONTROL_PORT,
    Channel,
    EndpointError,
    agent_control,
    endpoint_host,
    master_control,
    parse_endpoint,
    parse_host_port,
    stats_endpoint,
    stats_pub,
    stats_sub,
    tcp_endpoint,
)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HOSTS = ["127.0.0.1", *(["::1"] if _has_ipv6_loopback() else [])]


def run(main: Callable[[zmq.asyncio.Context], Coroutine[Any, Any, None]]) -> None:
    """Run ``main``, then prove it left no socket open: ``ctx.term()`` would wait for it
    for ever (it runs in a thread here, so a leak fails the test instead of hanging it)."""
    ctx = zmq.asyncio.Context()
    try:
        asyncio.run(asyncio.wait_for(main(ctx), 20))
    finally:
        if not _terminates(ctx):
            pytest.fail("a socket was left open: the context could not terminate")


@pytest.mark.parametrize(("host", "port", "expected"), [
    ("127.0.0.1", 5556, "tcp://127.0.0.1:5556"),
    ("::1", 5556, "tcp://[::1]:5556"),
    ("master", None, "tcp://master"),
    ("fe80::1", None, "tcp://[fe80::1]"),
])
def test_tcp_endpoint_brackets_ipv6(host: str, port: int | None, expected: str) -> None:
    assert tcp_endpoint(host, port) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.1", ("10.0.0.1", CONTROL_PORT)),
    ("10.0.0.1:7000", ("10.0.0.1", 7000)),
    (":0", ("127.0.0.1", 0)),
    ("[::1]:7000", ("::1", 7000)),
    ("[::1]", ("::1", CONTROL_PORT)),
    ("::", ("::", CONTROL_PORT)),
])
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("[::1", "unclosed"),
    ("[::1]7000", "expected [ADDRESS]:PORT"),
    ("host:http", "the port must be a number"),
    ("host:70000", "the port must be a number"),
    ("host:\u00b2", "the port must be a number"),  # a digit to str.isdigit, not to int()
])
def test_parse_host_port_refuses_with_the_text(text: str, says: str) -> None:
    with pytest.raises(EndpointError) as e:
        parse_host_port(text)
    assert repr(text) in str(e.value) and says in str(e.value)


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("tcp://127.0.0.1:5556", ("127.0.0.1", 5556)),
    ("tcp://master:6000", ("master", 6000)),
    ("tcp://[::1]:5556", ("::1", 5556)),
])
def test_parse_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected
    assert endpoint_host(endpoint) == expected[0]


@pytest.mark.parametrize("endpoint", [
    "127.0.0.1:5556", "tcp://127.0.0.1", "tcp://:5556", "tcp://::1:5556", "tcp://[::1]",
    "tcp://host:0", "tcp://host:x", "udp://host:1", "tcp://h:\u0661\u0662",
    "tcp://bad host:5556",
])
def test_parse_endpoint_refuses(endpoint: str) -> None:
    with pytest.raises(EndpointError) as e:
        parse_endpoint(endpoint)
    assert repr(endpoint) in str(e.value)


def test_stats_endpoint_keeps_the_host_the_agent_dialed() -> None:
    assert stats_endpoint("tcp://[::1]:5556", 40000) == "tcp://[::1]:40000"
    assert stats_endpoint("tcp://master:5556", 40000) == "tcp://master:40000"


async def _recv(channel: Channel, timeout: float = 5.0) -> list[bytes]:
    assert await channel.readable(timeout), "nothing arrived"
    frames = channel.recv()
    assert frames is not None
    return frames


@pytest.mark.parametrize("host", HOSTS)
def test_control_channels_talk_both_ways(host: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        master, endpoint = master_control(ctx, host, 0, 1024)
        agent = agent_control(ctx, endpoint, 1024, backoff_max=1.0)
        try:
            assert endpoint.startswith(tcp_endpoint(host) + ":")
            deadline = asyncio.get_running_loop().time() + 5
            while True:  # IMMEDIATE: nothing is queued before the connection is up
                try:
                    agent.send([b"hello"])
                    break
                except zmq.Again:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.02)
            identity, body = await _recv(master)
            assert body == b"hello"
            master.send([identity, b"welcome"])
            assert await _recv(agent) == [b"welcome"]
            assert agent.recv() is None  # nothing more: None, never a block
            # ROUTER_MANDATORY: a peer that is not there is an error, not a silent drop
            with pytest.raises(zmq.ZMQError):
                master.send([b"nobody", b"x"])
        finally:
            agent.close()
            master.close()
            assert master.closed and agent.closed
            master.close()  # twice is harmless

    run(main)


def test_master_control_drops_a_peer_over_its_size_limit() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        master, endpoint = master_control(ctx, "127.0.0.1", 0, 1024)
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(endpoint)
        try:
            await dealer.send_multipart([b"x" * 4096])  # over MAXMSGSIZE: connection dropped
            await asyncio.sleep(0.3)
            assert master.recv() is None
        finally:
            dealer.close()
            master.close()

    run(main)


def _terminates(ctx: zmq.Context[Any]) -> bool:
    """Whether ``ctx.term()`` returns: it waits for ever while a socket is open."""
    closer = threading.Thread(target=ctx.term, daemon=True)
    closer.start()
    closer.join(5)
    if closer.is_alive():
        ctx.destroy(linger=0)
        return False
    return True


@pytest.mark.parametrize("make", ["agent_control", "master_control"])
def test_a_socket_whose_setup_fails_is_closed_at_once(make: str) -> None:
    """The error's traceback holds the factory's frame (the daemon terminates its context
    while handling it): the socket must be closed by the factory, not by the GC."""
    ctx = zmq.asyncio.Context()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        if make == "agent_control":  # a name libzmq refuses as written
            agent_control(ctx, "tcp://bad\u00e9host..:5556", 1024, backoff_max=1.0)
        else:  # a port in use
            master_control(ctx, "127.0.0.1", blocker.getsockname()[1], 1024)
    except zmq.ZMQError:
        assert _terminates(ctx), "the failed socket was left open"
    else:
        pytest.fail("expected a ZMQError")
    finally:
        blocker.close()


@pytest.mark.parametrize("host", HOSTS)
def test_stats_pub_reaches_stats_sub_on_its_topic_only(host: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        sub, port = stats_sub(ctx, host, b"run1")
        sync_ctx = zmq.Context()
        pub = stats_pub(sync_ctx, tcp_endpoint(host, port))
        try:
            deadline = asyncio.get_running_loop().time() + 5
            got: list[list[bytes]] = []
            while not got:  # PUB/SUB: messages before the subscription arrives are lost
                pub.send_multipart([b"run2", b"other run"])
                pub.send_multipart([b"run1", b"delta"])
                if await sub.readable(0.05):
                    got = list(sub.drain(10))
                assert asyncio.get_running_loop().time() < deadline
            assert all(frames[0] == b"run1" for frames in got)
        finally:
            pub.close(linger=0)
            sync_ctx.term()
            sub.close()

    run(main)
