"""A small private network of Linux network namespaces, for multi-host end-to-end tests.

``private_network(tag, ["master", "agent1", "agent2"])`` builds::

    hub namespace: a bridge  <-- veth -->  one namespace per host, address 10.237.X.(i+1)/24

Every host namespace has ``lo`` up and one veth whose other end sits in the hub
namespace, attached to the bridge; host i (0-based, in the order given) gets address
``.(i+1)`` in a random 10.237.X.0/24. The veth pairs are created straight inside the
namespaces (``ip -n HUB link add ... peer ... netns HOST``): nothing in the root
namespace (interfaces, addresses, routes) is ever created or changed, and the subnet
exists only inside these namespaces. Names carry a random suffix, so parallel runs
do not collide.

On exit, also after a failure: every process of the test (the ``tag`` of
tests/e2e_helpers.py) and every process still inside one of the namespaces is
killed, each namespace is deleted (which removes its veths and the bridge), and the
context manager checks that no namespace with the suffix remains.

Needs root and a working ``ip netns add``; otherwise the test is skipped, saying why.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import pytest

from tests.e2e_helpers import kill_tagged

NETNS_DIR = "/run/netns"
SUBNET_PREFIX = "10.237"
IFNAMSIZ = 15  # longest interface name Linux accepts


@dataclass(frozen=True)
class Host:
    """One simulated machine: a namespace with one address on the private subnet."""

    name: str  # logical name given by the test: "master", "agent1", ...
    ns: str  # network namespace
    ip: str  # its address on the private subnet
    ifname: str  # its end of the veth pair, inside ``ns``
    hub_ifname: str  # the other end, inside the hub namespace, on the bridge


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc


def netns_names() -> list[str]:
    """Every named network namespace (``ip netns list``)."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ns_inode(ns: str) -> tuple[int, int] | None:
    try:
        st = os.stat(os.path.join(NETNS_DIR, ns))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pids_in_namespaces(namespaces: Sequence[str]) -> list[int]:
    """Live processes whose network namespace is one of ``namespaces``."""
    wanted = {key for key in map(_ns_inode, namespaces) if key is not None}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone, or a zombie
            continue
        if (st.st_dev, st.st_ino) in wanted:
            found.append(int(entry))
    return found


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Network:
    tag: str
    suffix: str
    subnet: str  # e.g. "10.237.42"
    hub: str  # the hub namespace, holding the bridge
    bridge: str
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)  # created, in creation order

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    @staticmethod
    def exec_cmd(ns: str | Host, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside a namespace (``ip netns exec`` execs it: same pid)."""
        name = ns.ns if isinstance(ns, Host) else ns
        return ["ip", "netns", "exec", name, *argv]

    def set_link(self, host: str | Host, up: bool) -> None:
        """Plug or unplug a host: its veth end on the hub's bridge goes up or down.

        Down is a cut cable: the host keeps its address and route, its packets are
        silently dropped (no error reaches its sockets), its TCP connections stall.
        """
        h = self.hosts[host] if isinstance(host, str) else host
        _ip("-n", self.hub, "link", "set", "dev", h.hub_ifname, "up" if up else "down")

    def pids(self, host: str | Host | None = None) -> list[int]:
        """Live processes inside one host's namespace (or inside any of ours)."""
        if host is None:
            return pids_in_namespaces(self.namespaces)
        h = self.hosts[host] if isinstance(host, str) else host
        return pids_in_namespaces([h.ns])

    # -- building and tearing down ------------------------------------------------------
    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "dev", "lo", "up")

    def _add_host(self, index: int, name: str) -> Host:
        ns = f"lt{self.suffix}-{index}"
        host = Host(name=name, ns=ns, ip=f"{self.subnet}.{index + 1}",
                    ifname=f"lt{self.suffix}e{index}", hub_ifname=f"lt{self.suffix}h{index}")
        assert max(len(host.ifname), len(host.hub_ifname)) <= IFNAMSIZ
        self._add_ns(ns)
        # both ends are born in their namespaces: the root namespace never sees them
        _ip("-n", self.hub, "link", "add", "name", host.hub_ifname, "type", "veth",
            "peer", "name", host.ifname, "netns", ns)
        _ip("-n", self.hub, "link", "set", "dev", host.hub_ifname, "master", self.bridge, "up")
        _ip("-n", ns, "addr", "add", f"{host.ip}/24", "dev", host.ifname)
        _ip("-n", ns, "link", "set", "dev", host.ifname, "up")
        self.hosts[name] = host
        return host

    def teardown(self) -> None:
        """Kill what runs in the namespaces, delete them, check none is left."""
        kill_tagged(self.tag)
        deadline = time.monotonic() + 10
        while True:
            left = self.pids()
            for pid in left:  # untagged stragglers too: a live process keeps its namespace
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        errors = [f"processes still inside the namespaces: {left}"] if left else []
        for ns in reversed(self.namespaces):
            proc = _ip("netns", "del", ns, check=False)
            if proc.returncode != 0:
                errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
        remaining = [n for n in netns_names() if f"lt{self.suffix}" in n]
        if remaining:
            errors.append(f"namespaces left behind: {remaining}")
        if errors:
            raise RuntimeError("; ".join(errors))


def _skip_unless_netns_works(probe: str) -> None:
    """Create the first namespace; skip the test only if that is impossible here."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    try:
        proc = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        pytest.skip("`ip` (iproute2) is not installed")
    if proc.returncode != 0:
        pytest.skip(f"`ip netns add` does not work here: {proc.stderr.strip()}")


@contextmanager
def private_network(tag: str, host_names: Sequence[str]) -> Iterator[Network]:
    """The hub, its bridge and one namespace per host name; always torn down."""
    assert len(host_names) < 250 and len(set(host_names)) == len(host_names)
    suffix = secrets.token_hex(3)
    net = Network(tag=tag, suffix=suffix, subnet=f"{SUBNET_PREFIX}.{random.randint(1, 250)}",
                  hub=f"lt{suffix}-hub", bridge=f"lt{suffix}br")
    _skip_unless_netns_works(net.hub)
    net.namespaces.append(net.hub)
    try:
        _ip("-n", net.hub, "link", "set", "dev", "lo", "up")
        _ip("-n", net.hub, "link", "add", "name", net.bridge, "type", "bridge")
        _ip("-n", net.hub, "link", "set", "dev", net.bridge, "up")
        for index, name in enumerate(host_names):
            net._add_host(index, name)
        yield net
    finally:
        net.teardown()
