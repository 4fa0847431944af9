"""Several `loadagent start` daemons on loopback: exact totals, split, faults, refusals."""

from __future__ import annotations

import itertools
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import zmq

from protocol.wire.codec import HEADER, MAGIC, PROTOCOL_VERSION, decode, encode
from protocol.wire.messages import (
    HEARTBEAT,
    BundleFile,
    Heartbeat,
    Job,
    JobRefused,
    Register,
    RunDone,
    Welcome,
)
from tests.e2e_helpers import (
    Agents,
    LineReader,
    Result,
    Target,
    free_port,
    run_master,
    start_agent,
    started_master,
    write_job,
)

T = TypeVar("T")

# The seed's client, posting to <host>/<agent name> so the target counts per agent.
AGENT_CLIENT = '''
import os
import aiohttp
from protocol import ClientProtocol

class HttpClient(ClientProtocol):
    def init_before_use(self, host):
        self._session = aiohttp.ClientSession()
        self._url = host + "/" + os.environ["TEST_AGENT"]

    async def shutdown(self):
        await self._session.close()

    async def execute(self):
        async with self._session.post(self._url, data=b"x") as response:
            await response.read()
            if response.status != 200:
                raise ValueError(f"status {response.status}")
'''


@pytest.fixture
def agents(tag: str, tmp_path: Path) -> Iterator[Agents]:
    a = Agents(tag, free_port(), tmp_path)
    yield a
    codes = a.stop_all()
    bad = {name: a.logs[name].text(1) for name, code in codes.items() if code != 0}
    for name, log in bad.items():
        print(f"--- agent {name} (exit {codes[name]}) ---\n{log}")
    assert not bad, codes


def agent_rows(r: Result) -> dict[str, list[str]]:
    """name -> [workers, clients, success, fail, rps, state] from the final agents table."""
    return {line.split()[0]: line.split()[1:] for line in r.section("agents:")}


def by_agent(target: Target) -> dict[str, int]:
    return {path.rsplit("/", 1)[1]: n for path, n in target.counts()["by_path"].items()}


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def stops_growing_within(count: Callable[[], int], since: float, limit: float) -> float:
    """Seconds from ``since`` to the last time ``count()`` grew, watched for limit + 3 s."""
    last_value, last_change = count(), time.monotonic()
    while time.monotonic() < since + limit + 3:
        value = count()
        if value != last_value:
            last_value, last_change = value, time.monotonic()
        time.sleep(0.1)
    return last_change - since


def test_three_agents_exact_totals_split_and_back_to_back_runs(
        tmp_path: Path, tag: str, target: Target, agents: Agents) -> None:
    for name in ("a0", "a1", "a2"):
        agents.start(name)  # the agents dial before the master exists
    time.sleep(0.5)
    conf = write_job(tmp_path, {"host": target.url, "users": 10, "hatch_rate": 10,
                                "run_time": 3, "agent_timeout": 20},
                     client=AGENT_CLIENT)
    args = ("--agents", "3", "--bind", f"127.0.0.1:{agents.port}")
    r = run_master(tmp_path, conf, tag, *args)
    assert r.code == 0, r.stderr
    served = by_agent(target)
    rows = agent_rows(r)
    assert sorted(rows) == ["a0", "a1", "a2"]
    assert sorted(int(row[1]) for row in rows.values()) == [3, 3, 4]  # 10 users over 3 workers
    for name, row in rows.items():
        assert int(row[2]) == served[name] > 0
        assert row[-1] == "ok"
    assert r.final_int("success count") == sum(served.values()) == target.counts()["ok"]

    # the same agents take a second test at once
    before = by_agent(target)
    r2 = run_master(tmp_path, conf, tag, *args, "--users", "5")
    assert r2.code == 0, r2.stderr
    after = by_agent(target)
    rows2 = agent_rows(r2)
    assert sorted(int(row[1]) for row in rows2.values()) == [1, 2, 2]
    for name, row in rows2.items():
        assert int(row[2]) == after[name] - before[name] > 0
    # and the agents never saw the test files except in their (removed) run directories
    assert list(agents.cwd.iterdir()) == []
    assert "run directory removed" in agents.logs["a0"].wait_for("run directory removed", 10)


def test_every_run_ends_on_the_agent_with_done_and_no_error(
        tmp_path: Path, tag: str, target: Target, agents: Agents) -> None:
    # RUN_DONE is acknowledged before the master closes its socket, so the agent reads
    # everything the master sent (STOP included) and never takes the end for a loss
    agents.start("steady")
    conf = write_job(tmp_path, {"host": target.url, "users": 2, "run_time": 1,
                                "agent_timeout": 20}, client=AGENT_CLIENT)
    for _ in range(3):
        r = run_master(tmp_path, conf, tag, "--agents", "1", "--bind",
                       f"127.0.0.1:{agents.port}")
        assert r.code == 0, r.stderr
    lines = agents.logs["steady"].wait_for_count("run directory removed", 3, 10)
    runs = [line for line in lines if "job received" in line]
    assert len(runs) == 3
    for needle in ("STOP from the master", "done; back to idle", "run directory removed"):
        assert sum(needle in line for line in lines) == 3, (needle, "\n".join(lines))
    assert not [line for line in lines if " ERROR " in line or " lost" in line], \
        "\n".join(lines)


def test_master_started_before_the_agents(tmp_path: Path, tag: str, target: Target,
                                          agents: Agents) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "run_time": 2,
                                "agent_timeout": 30}, client=AGENT_CLIENT)
    with started_master(tmp_path, conf, tag, "--agents", "2", "--bind",
                        f"127.0.0.1:{agents.port}") as proc:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        out.wait_for("waiting for 2 agent(s)", 20)
        agents.start("late0")
        agents.start("late1")
        code = proc.wait(60)
        r = Result(code, out.text(), err.text())
    assert r.code == 0, r.stderr
    assert r.final_int("success count") == target.counts()["ok"] > 0


def test_kill9_agent_mid_run_is_reported_lost_and_survivors_are_exact(
        tmp_path: Path, tag: str, target: Target, agents: Agents) -> None:
    for name in ("s0", "victim", "s1"):
        agents.start(name)
    conf = write_job(tmp_path, {"host": target.url, "users": 6, "run_time": 8,
                                "agent_timeout": 20}, client=AGENT_CLIENT)
    with started_master(tmp_path, conf, tag, "--agents", "3", "--bind",
                        f"127.0.0.1:{agents.port}") as proc:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        out.wait_for("current rps", 30)
        agents.procs["victim"].kill()
        killed_at = time.monotonic()
        # its workers watch the agent's pipe: the victim's load stops within 5 s
        took = stops_growing_within(lambda: by_agent(target).get("victim", 0), killed_at, 5)
        assert took < 5, f"the killed agent's load went on for {took:.1f}s"
        code = proc.wait(60)
        r = Result(code, out.text(), err.text())
    assert r.code == 5, r.stderr
    rows = agent_rows(r)
    assert rows["victim"][-1] == "LOST"
    assert any(line.startswith("agent victim LOST at") for line in r.stdout.splitlines())
    served = by_agent(target)
    for name in ("s0", "s1"):
        assert rows[name][-1] == "ok"
        assert int(rows[name][2]) == served[name] > 0
    # the lost agent counts up to its last live delta: never more than it made
    assert 0 <= int(rows["victim"][2]) <= served["victim"]
    assert agents.procs["victim"].wait(5) == -signal.SIGKILL


def test_kill9_master_stops_all_load_within_5s_and_agents_serve_the_next_master(
        tmp_path: Path, tag: str, target: Target, agents: Agents) -> None:
    agents.start("b0")
    agents.start("b1")
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "run_time": 60,
                                "agent_timeout": 20}, client=AGENT_CLIENT)
    args = ("--agents", "2", "--bind", f"127.0.0.1:{agents.port}")
    with started_master(tmp_path, conf, tag, *args) as proc:
        out = LineReader(proc.stdout)
        LineReader(proc.stderr)
        out.wait_for("current rps", 30)
        proc.kill()
        killed_at = time.monotonic()
        took = stops_growing_within(lambda: target.counts()["ok"], killed_at, 5)
    assert took < 5, f"load went on for {took:.1f}s after the master died"
    for name in ("b0", "b1"):
        agents.logs[name].wait_for("lost (no heartbeat", 10)
        agents.logs[name].wait_for("run directory removed", 10)
    # the same agents register with the next master and run its test
    before = target.counts()["ok"]
    r = run_master(tmp_path, conf, tag, *args, "--run-time", "2")
    assert r.code == 0, r.stderr
    assert r.final_int("success count") == target.counts()["ok"] - before > 0


def test_agent_sigterm_mid_run_stops_gracefully_and_is_reported_left(
        tmp_path: Path, tag: str, target: Target, agents: Agents) -> None:
    agents.start("stay")
    leaver = agents.start("leaver")
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "run_time": 8,
                                "agent_timeout": 20}, client=AGENT_CLIENT)
    with started_master(tmp_path, conf, tag, "--agents", "2", "--bind",
                        f"127.0.0.1:{agents.port}") as proc:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        out.wait_for("current rps", 30)
        leaver.send_signal(signal.SIGTERM)
        assert leaver.wait(15) == 0
        code = proc.wait(60)
        r = Result(code, out.text(), err.text())
    assert r.code == 5, r.stderr
    rows = agent_rows(r)
    assert rows["leaver"][-1] == "left", (r.stdout, r.stderr, agents.logs["leaver"].text())
    served = by_agent(target)
    # it sent its final totals before leaving: exact, like the agent that stayed
    assert int(rows["leaver"][2]) == served["leaver"] > 0
    assert int(rows["stay"][2]) == served["stay"] > 0


def test_too_few_agents_within_agent_timeout_exits_4(tmp_path: Path, tag: str,
                                                     agents: Agents) -> None:
    agents.start("only")
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 2, "run_time": 1,
                                "agent_timeout": 3}, client=AGENT_CLIENT)
    r = run_master(tmp_path, conf, tag, "--agents", "2", "--bind", f"127.0.0.1:{agents.port}")
    assert r.code == 4
    assert "only 1 of 2 agent(s) registered within 3s" in r.stderr
    assert "only" in r.stderr.rsplit("registered:", 1)[1]


@pytest.mark.parametrize("entry, message", [
    ("../outside.txt", "outside"),
    ("/etc/hostname", "outside"),
    ("link-out", "a link that leaves"),
])
def test_master_refuses_bundle_entries_that_leave_its_directory(
        tmp_path: Path, tag: str, target: Target, entry: str, message: str) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (tmp_path / "outside.txt").write_text("secret")
    (job / "link-out").symlink_to(tmp_path / "outside.txt")
    conf = write_job(job, {"host": target.url, "users": 1, "run_time": 1, "files": [entry]})
    r = run_master(job, conf, tag)
    assert r.code == 2, (r.stdout, r.stderr)
    assert message in r.stderr and entry in r.stderr
    assert target.counts()["ok"] == 0


def test_bundle_over_the_agents_limit_is_refused_before_sending(
        tmp_path: Path, tag: str, target: Target, agents: Agents) -> None:
    agents.start("small", "--max-message", "65536")
    conf = write_job(tmp_path, {"host": target.url, "users": 1, "run_time": 1,
                                "files": ["big.bin"], "agent_timeout": 20},
                     client=AGENT_CLIENT)
    (tmp_path / "big.bin").write_bytes(b"x" * 70_000)
    r = run_master(tmp_path, conf, tag, "--agents", "1", "--bind", f"127.0.0.1:{agents.port}")
    assert r.code == 2, r.stderr
    assert "over agent small's limit of 64 KiB" in r.stderr
    assert target.counts()["ok"] == 0


class FakeMaster:
    """A ROUTER socket speaking the control protocol by hand, to drive a real agent."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")

    def recv(self, timeout: float = 10) -> tuple[bytes, list[bytes]]:
        assert self.sock.poll(int(timeout * 1000)), "no message from the agent"
        identity, *frames = self.sock.recv_multipart()
        return identity, frames

    def expect(self, kind: type[T], timeout: float) -> T:
        """The agent's next message of type ``kind`` (others, heartbeats, are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            _, frames = self.recv(max(0.1, deadline - time.monotonic()))
            msg = decode(frames)
            if isinstance(msg, kind):
                return msg

    def accept(self) -> bytes:
        """Read the agent's REGISTER, welcome it; its identity."""
        identity, frames = self.recv()
        assert isinstance(decode(frames), Register)
        self.sock.send_multipart([identity, *encode(Welcome(
            accepted=True, reason="", stats_port=free_port(), master_time=time.time()))])
        return identity

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def test_agent_refuses_a_master_of_another_protocol_version(tag: str, tmp_path: Path) -> None:
    fake = FakeMaster()
    agents = Agents(tag, fake.port, tmp_path)
    try:
        proc = agents.start("old")
        identity, frames = fake.recv()
        assert isinstance(decode(frames), Register)
        body = encode(Welcome(accepted=True, reason="", stats_port=1, master_time=0.0))[1]
        fake.sock.send_multipart([identity, HEADER.pack(MAGIC, PROTOCOL_VERSION + 98, 2), body])
        assert proc.wait(15) == 2
        log = agents.logs["old"].text()
        assert f"speaks protocol version {PROTOCOL_VERSION + 98}, this agent speaks " \
               f"{PROTOCOL_VERSION}" in log
    finally:
        agents.stop_all()
        fake.close()


def test_master_refuses_an_agent_of_another_protocol_version(tmp_path: Path, tag: str) -> None:
    OTHER = PROTOCOL_VERSION + 1  # an agent of a later release
    port = free_port()
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 1, "run_time": 1,
                                "agent_timeout": 4})
    with started_master(tmp_path, conf, tag, "--agents", "1", "--bind",
                        f"127.0.0.1:{port}") as proc:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        out.wait_for("waiting for 1 agent(s)", 20)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(f"tcp://127.0.0.1:{port}")
        try:
            reg = Register(name="future", hostname="h", cores=1, workers=1, version="9",
                           pid=1, max_message=1 << 20, token="")
            sock.send_multipart([HEADER.pack(MAGIC, OTHER, 1), encode(reg)[1]])
            assert sock.poll(10_000)
            frames = sock.recv_multipart()
        finally:
            sock.close()
            ctx.term()
        code = proc.wait(30)
        stderr = err.text()
    # the refusal is readable by an agent of any version, and names both versions
    with pytest.raises(Exception, match=f"agent speaks protocol version {OTHER}, master "
                                        f"speaks {PROTOCOL_VERSION}"):
        decode(frames)
    assert "refused" in stderr and f"protocol version {OTHER}" in stderr
    assert code == 4  # and it was not counted as an agent


def test_agent_refuses_a_bundle_that_leaves_its_run_directory(tag: str, tmp_path: Path) -> None:
    fake = FakeMaster()
    agents = Agents(tag, fake.port, tmp_path)
    try:
        agents.start("careful")
        identity = fake.accept()
        for path in ("../evil.py", "/tmp/evil-absolute.py", "ok/../../evil.py"):
            job = Job(run_id="0123456789abcdef", host="h", class_file="c.py", class_name="",
                      custom_conf={}, users=1, hatch_rate=1, run_time=1, wait_time=0,
                      stop_grace=0, total_workers=1, worker_ids=[0],
                      bundle=[BundleFile(path="c.py", mode=0o644, data=b""),
                              BundleFile(path=path, mode=0o644, data=b"boom")])
            fake.sock.send_multipart([identity, *encode(job)])
            msg = fake.expect(JobRefused, 10)
            assert "bundle refused" in msg.error and path in msg.error
        assert not Path("/tmp/evil-absolute.py").exists()
        assert not any(p.name.startswith("evil") for p in Path("/tmp").iterdir())
    finally:
        agents.stop_all()
        fake.close()


BIG_BUNDLE_FILES = 200_000


def test_a_job_of_200k_files_never_pauses_the_agents_heartbeats(
        tag: str, tmp_path: Path) -> None:
    # Decoding a job of 200,000 files, writing them and removing its run directory take
    # seconds; all of it happens off the agent's loop, so it heartbeats every second
    # throughout (before, a master dropped such an agent after 3 s of silence). The run
    # directory is on a tmpfs, where the job is written in seconds, not minutes.
    # built before the agent starts: the test answers heartbeats only in serve_until
    bundle = [BundleFile(path="c.py", mode=0o644, data=b"")]
    bundle += [BundleFile(path=f"d{i // 1000:03}/f{i % 1000:03}", mode=0o644, data=b"x")
               for i in range(BIG_BUNDLE_FILES)]
    job = Job(run_id="0123456789abcdef", host="h", class_file="c.py", class_name="",
              custom_conf={}, users=1, hatch_rate=1, run_time=1, wait_time=0,
              stop_grace=0, total_workers=1, worker_ids=[0], bundle=bundle)
    job_frames = encode(job)
    fake = FakeMaster()
    agents = Agents(tag, fake.port, tmp_path)
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        proc = start_agent(tag, agents.master, "busy", "--workers", "1",
                           env={"TMPDIR": str(shm)}, cwd=agents.cwd)
        agents.procs["busy"] = proc
        log = agents.logs["busy"] = LineReader(proc.stdout)
        identity, frames = fake.recv()
        assert isinstance(decode(frames), Register)
        fake.sock.send_multipart([identity, *encode(Welcome(
            accepted=True, reason="", stats_port=free_port(), master_time=time.time()))])
        fake.sock.send_multipart([identity, *job_frames])
        sent: list[float] = []  # the agent's own clock when it sent each heartbeat

        def serve_until(needle: str, timeout: float) -> None:
            """Answer the agent as a master would (heartbeat echoes), noting each beat."""
            deadline = time.monotonic() + timeout
            while needle not in log.text(0):
                assert time.monotonic() < deadline, log.text(0)
                if not fake.sock.poll(100):
                    continue
                who, *frames = fake.sock.recv_multipart()
                msg = decode(frames)
                if isinstance(msg, Heartbeat):
                    sent.append(msg.sent_at)
                    fake.sock.send_multipart([who, *encode(Heartbeat(
                        sent_at=time.time(), echo=msg.sent_at))])

        # the client file is empty: its worker fails before load, as this test needs none
        serve_until("failed before load", 120)
        fake.sock.send_multipart([identity, *encode(RunDone(run_id=job.run_id))])
        serve_until("run directory removed", 60)
        gaps = [b - a for a, b in itertools.pairwise(sent)]
        # a beat every HEARTBEAT seconds; never a missed one (before: gaps of 2.2 s and more)
        assert len(sent) > 3 and max(gaps) < 2 * HEARTBEAT, gaps
        assert not list(shm.glob("loadagent-[0-9]*"))  # run directories
    finally:
        agents.stop_all()
        fake.close()
        shutil.rmtree(shm, ignore_errors=True)
