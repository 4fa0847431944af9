"""Several hosts for real: the master and each agent in its own network namespace.

tests/netns.py builds a private bridge network (one namespace per host, one address
each); the target listens on the master's address; agents dial the master over that
network. The target counts answers per client address, which proves where the traffic
came from. Needs root and `ip netns` (skipped otherwise, with the reason).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.e2e_helpers import (
    LineReader,
    Result,
    Target,
    make_keys,
    master_cmd,
    tagged_env,
    wait_no_tagged,
    write_job,
)
from tests.netns import Host, Network, parent_pid, private_network

CONTROL_PORT = 5556


@pytest.fixture
def make_network(tag: str) -> Iterator[Callable[[Sequence[str]], Network]]:
    """Builds a private network for the test; torn down before ``tag`` checks processes."""
    with ExitStack() as stack:
        yield lambda hosts: stack.enter_context(private_network(tag, hosts))


class Agent:
    """``loadagent start`` inside a host's namespace, its cwd an empty directory."""

    def __init__(self, net: Network, host: Host, tag: str, master: Host, cwd: Path,
                 *args: str) -> None:
        self.host = host
        cmd = [sys.executable, "-m", "loadagent", "start",
               "--master", f"tcp://{master.ip}:{CONTROL_PORT}", "--name", host.name,
               "--workers", "1", *args]
        self.proc = subprocess.Popen(net.exec_cmd(host, cmd), cwd=cwd, env=tagged_env(tag),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, stdin=subprocess.DEVNULL)
        self.log = LineReader(self.proc.stdout)  # stdout and stderr together

    def worker_pids(self, net: Network) -> list[int]:
        """Its worker processes: children of its forkserver, itself a child of the agent."""
        return [pid for pid in net.pids(self.host)
                if parent_pid(parent_pid(pid) or 0) == self.proc.pid]


def stop_agents(agents: Sequence[Agent], timeout: float = 10) -> None:
    """SIGTERM to every agent, as an operator would: each must exit 0 within ``timeout``."""
    for a in agents:
        a.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for a in agents:
        try:
            code = a.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent {a.host.name} still runs {timeout}s after SIGTERM:\n"
                                 + a.log.text(0)) from None
        assert code == 0, f"agent {a.host.name} exited {code} on SIGTERM:\n{a.log.text(0)}"


@contextmanager
def master_in(net: Network, host: Host, workdir: Path, conf: Path, tag: str,
              *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(net.exec_cmd(host, master_cmd(conf, *args)), cwd=workdir,
                            env=tagged_env(tag), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def agent_rows(result: Result) -> dict[str, dict[str, str]]:
    """The final block's agents table: agent name -> {column label: value}.

    Read by the header: each value sits under its label (numbers right-aligned, name and
    state left-aligned), so a value belongs to the label its text overlaps; columns added
    later do not shift the ones read here.
    """
    lines = result.stdout[result.stdout.rfind("final benchmark:"):].splitlines()
    assert "agents:" in lines, result.stdout
    header = lines[lines.index("agents:") + 1]
    labels = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    rows = {}
    for line in result.section("agents:"):
        row = {}
        for m in re.finditer(r"\S+", line):
            under = [name for start, end, name in labels if m.start() < end and start < m.end()]
            assert len(under) == 1, f"{m.group()!r} is not under one label:\n{header}\n{line}"
            row[under[0]] = m.group()
        rows[row["name"]] = row
    return rows


def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_agents_on_separate_hosts_generate_traffic_from_their_own_addresses(
        tmp_path: Path, tag: str, make_network: Callable[[Sequence[str]], Network]) -> None:
    """With keys, as the README's multi-host set-up: every figure exact."""
    net = make_network(["master", "agent1", "agent2", "agent3"])
    master = net["master"]
    hosts = [net["agent1"], net["agent2"], net["agent3"]]
    target = Target(tag, host=master.ip, netns=master.ns)  # on the master's address only
    master_dir, agent_dir = tmp_path / "master", tmp_path / "agent"
    master_dir.mkdir()
    agent_dir.mkdir()  # the agents' cwd: empty, and it must stay so
    conf = write_job(master_dir, {"host": target.url, "users": 9, "hatch_rate": 9,
                                  "run_time": 3, "agent_timeout": 20})
    keys = make_keys(tmp_path)
    agents = [Agent(net, h, tag, master, agent_dir, *keys.agent_args) for h in hosts]

    proc = subprocess.run(
        net.exec_cmd(master, master_cmd(conf, "--agents", "3",
                                        "--bind", f"{master.ip}:{CONTROL_PORT}",
                                        *keys.master_args)),
        cwd=master_dir, env=tagged_env(tag), capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL)
    r = Result(proc.returncode, proc.stdout, proc.stderr)
    assert r.code == 0, (r.stdout, r.stderr)

    served = target.counts()
    assert r.final_int("success count") == served["ok"] > 0
    assert r.final_int("fail count") == 0 == served["fail"]
    # every answer went to one of the three agents' addresses, each one sent some
    by_peer = served["by_peer"]
    assert set(by_peer) == {h.ip for h in hosts}, by_peer
    assert all(by_peer[h.ip] > 0 for h in hosts), by_peer
    assert sum(by_peer.values()) == served["ok"] + served["fail"]
    # the agents table: exact split of the 9 users, and each agent's own count is what
    # the target saw coming from that agent's address
    rows = agent_rows(r)
    assert set(rows) == {h.name for h in hosts}, r.stdout
    for h in hosts:
        row = rows[h.name]
        assert (row["workers"], row["clients"], row["state"]) == ("1", "3", "ok"), row
        assert int(row["success"]) == by_peer[h.ip], (h, row, by_peer)

    # the agents had no copy of the job: it was shipped to them
    assert "shipping 2 file(s)" in r.stderr
    assert (master_dir / "examples" / "http_post.py").is_file()
    assert list(agent_dir.iterdir()) == []
    for a in agents:
        a.log.wait_for("job received (1 worker(s), 2 bundle file(s))", timeout=5)
        a.log.wait_for("run directory removed", timeout=10)

    stop_agents(agents)
    target.stop()
    assert wait_no_tagged(tag, timeout=10) == []


def test_agent_whose_link_goes_down_is_reported_lost(
        tmp_path: Path, tag: str, make_network: Callable[[Sequence[str]], Network]) -> None:
    run_time = 8
    net = make_network(["master", "agent1", "agent2"])
    master = net["master"]
    h1, h2 = net["agent1"], net["agent2"]
    target = Target(tag, host=master.ip, netns=master.ns)
    master_dir, agent_dir = tmp_path / "master", tmp_path / "agent"
    master_dir.mkdir()
    agent_dir.mkdir()
    conf = write_job(master_dir, {"host": target.url, "users": 4, "hatch_rate": 4,
                                  "run_time": run_time, "stop_grace": 2, "agent_timeout": 20})
    a1, a2 = (Agent(net, h, tag, master, agent_dir, "--insecure") for h in (h1, h2))

    with master_in(net, master, master_dir, conf, tag, "--agents", "2",
                   "--bind", f"{master.ip}:{CONTROL_PORT}", "--insecure") as proc:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        try:
            out.wait_for("current rps", timeout=30)
        except AssertionError as e:
            raise AssertionError(f"{e}\nmaster exit code {proc.poll()}, stderr:\n"
                                 f"{err.text(0)}\nagent1:\n{a1.log.text(0)}\n"
                                 f"agent2:\n{a2.log.text(0)}") from None
        loading = time.monotonic()
        assert wait_until(
            lambda: all(target.counts()["by_peer"].get(h.ip, 0) > 0 for h in (h1, h2)), 10), \
            target.counts()  # both agents' traffic reaches the target
        assert len(a2.worker_pids(net)) == 1  # what "its workers are gone" is checked on

        down = time.monotonic()
        net.set_link(h2, up=False)  # agent2's cable is cut: silence, no error
        err.wait_for("agent agent2 lost", timeout=10)
        lost = time.monotonic()
        assert 1.5 <= lost - down <= 6.0, lost - down  # three missed 1 s heartbeats
        # Plug it back in at once. From now on agent2 could reach the master and the
        # target again, so what follows shows that it stopped its load by itself (it
        # missed three heartbeats from the master too), not that the cable stopped it.
        net.set_link(h2, up=True)
        # "An agent that loses its master ABORTs all load within 5 s": its worker
        # processes, the only ones that make calls, exit. Checked on the processes,
        # not on the target's counter: a request written before the cut may sit in the
        # kernel's TCP retransmission queue and land seconds later, after its worker
        # is long gone.
        assert wait_until(lambda: not a2.worker_pids(net), lost + 5 - time.monotonic()), \
            f"agent2's workers still run 5 s after the loss:\n{a2.log.text(0)}"
        after_abort = target.counts()["by_peer"].get(h2.ip, 0)
        a2.log.wait_for("lost (no heartbeat for", timeout=1)  # its own view, logged

        code = proc.wait(timeout=run_time + 15 - (time.monotonic() - loading))
        r = Result(code, out.text(), err.text())

    assert r.code == 5, (r.stdout, r.stderr)
    notes = r.stdout[r.stdout.rfind("final benchmark:"):]
    assert re.search(r"^agent agent2 LOST at \d+\.\ds into the run "
                     r"\(no heartbeat for \d+\.\ds\)$", notes, re.M), r.stdout
    rows = agent_rows(r)
    assert set(rows) == {"agent1", "agent2"}, r.stdout
    assert rows["agent1"]["state"] == "ok" and rows["agent2"]["state"] == "LOST", r.stdout
    assert rows["agent1"]["clients"] == rows["agent2"]["clients"] == "2"
    served = target.counts()
    by_peer = served["by_peer"]
    assert set(by_peer) <= {h1.ip, h2.ip}, by_peer
    # the survivor's totals came over the reliable path: exact
    survivor = int(rows["agent1"]["success"])
    assert survivor == by_peer[h1.ip] > 0, (rows, by_peer)
    assert r.final_int("success count") >= survivor
    # the lost agent counts up to its last live delta, even though its totals could
    # reach the master once the link was back: the report says so
    assert "of agent agent2: no heartbeat for" in notes and "last live delta" in notes
    assert 0 < int(rows["agent2"]["success"]) <= by_peer[h2.ip]
    # after its workers exited, agent2 made no new call: at most one call per client
    # (2 clients) was still in flight and may have reached the target late
    assert by_peer.get(h2.ip, 0) - after_abort <= 2, (after_abort, by_peer)

    stop_agents([a1, a2])
    target.stop()
    assert wait_no_tagged(tag, timeout=10) == []
