"""CURVE keys and safe defaults, end to end on loopback: agents obey only their master,
masters count only their agents, and no peer without the keys can run code or forge
figures (issue 17). The multi-host run with keys is in tests/test_multihost_netns.py;
garbage thrown at live sockets in tests/test_fuzz_sockets.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from protocol.security import fingerprint, load_public
from protocol.stats import Totals
from protocol.wire.codec import decode, encode, encode_stats
from protocol.wire.messages import (
    BundleFile,
    Delta,
    Final,
    Job,
    JobFailed,
    Register,
    RunDone,
    Welcome,
)
from tests.e2e_helpers import (
    Agents,
    Keys,
    LineReader,
    Target,
    free_port,
    make_keys,
    run_master,
    start_agent,
    started_master,
    tagged_env,
    write_job,
)
from tests.test_agents_e2e import AGENT_CLIENT, FakeMaster, agent_rows, by_agent

# A client that leaves a mark the moment its file is imported: proof that it ran
MARKING_CLIENT = '''
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from protocol import ClientProtocol

class Marking(ClientProtocol):
    async def execute(self):
        pass
'''


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


def cli(program: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", program, *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env=tagged_env("security-cli"))


# -- keygen --------------------------------------------------------------------------------
def test_keygen_writes_a_pair_whose_secret_only_its_owner_reads_and_never_overwrites(
        tmp_path: Path) -> None:
    folder = tmp_path / "m"
    r = cli("loadmaster", "keygen", str(folder))
    assert r.returncode == 0, r.stderr
    public, secret = folder / "master.key", folder / "master.key_secret"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert oct(public.stat().st_mode & 0o777) == "0o644"
    assert "secret-key" not in public.read_text() and "secret-key" in secret.read_text()
    assert fingerprint(load_public(public, "")) in r.stdout
    again = cli("loadmaster", "keygen", str(folder))
    assert again.returncode == 2 and "already exists" in again.stderr
    agent = cli("loadagent", "keygen", str(tmp_path / "a"), "--name", "edge-1")
    assert agent.returncode == 0 and (tmp_path / "a" / "edge-1.key").is_file()


def test_a_secret_key_others_can_read_or_a_missing_key_is_refused_by_name(
        tmp_path: Path, keys: Keys, tag: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:9/", "users": 1, "run_time": 1})
    secret = keys.master / "master.key_secret"
    secret.chmod(0o644)
    r = run_master(tmp_path, conf, tag, *keys.master_args)
    assert r.code == 2 and f"--key {secret}: readable by others" in r.stderr
    secret.chmod(0o600)
    r = run_master(tmp_path, conf, tag, "--key", str(keys.master))
    assert r.code == 2 and "--authorized-agents is required with --key" in r.stderr
    r = run_master(tmp_path, conf, tag, "--key", str(tmp_path / "nope"),
                   "--authorized-agents", str(keys.authorized))
    assert r.code == 2 and "--key" in r.stderr and "not a folder" in r.stderr
    bad = cli("loadagent", "start", "--key", str(keys.agent))
    assert bad.returncode == 2 and "--master-key is required with --key" in bad.stderr


# -- the happy path with keys --------------------------------------------------------------
def test_keys_with_the_embedded_agent_give_exact_totals(tmp_path: Path, tag: str,
                                                         target: Target, keys: Keys) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "hatch_rate": 4,
                                "run_time": 2})
    r = run_master(tmp_path, conf, tag, *keys.master_args)
    assert r.code == 0, r.stderr
    assert r.final_int("success count") == target.counts()["ok"] > 0


def test_keys_in_the_config_work_as_the_options(tmp_path: Path, tag: str, target: Target,
                                                keys: Keys) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 2, "run_time": 1,
                                "security": {"key": str(keys.master),
                                             "authorized_agents": str(keys.authorized)}})
    r = run_master(tmp_path, conf, tag)
    assert r.code == 0, r.stderr
    assert r.final_int("success count") == target.counts()["ok"] > 0
    bad = write_job(tmp_path, {"host": target.url, "users": 2, "run_time": 1,
                               "security": {"key": str(keys.master)}})
    r = run_master(tmp_path, bad, tag)
    assert r.code == 2 and "key 'security'" in r.stderr


def test_keys_with_two_daemons_give_exact_totals(tmp_path: Path, tag: str, target: Target,
                                                  keys: Keys) -> None:
    agents = Agents(tag, free_port(), tmp_path)
    try:
        for name in ("k0", "k1"):
            agents.start(name, *keys.agent_args)
        conf = write_job(tmp_path, {"host": target.url, "users": 4, "hatch_rate": 4,
                                    "run_time": 2, "agent_timeout": 20}, client=AGENT_CLIENT)
        r = run_master(tmp_path, conf, tag, "--agents", "2", "--bind",
                       f"127.0.0.1:{agents.port}", *keys.master_args)
        assert r.code == 0, r.stderr
        served = by_agent(target)
        rows = agent_rows(r)
        assert sorted(rows) == ["k0", "k1"]
        for name, row in rows.items():
            assert int(row[2]) == served[name] > 0
        assert r.final_int("success count") == target.counts()["ok"]
    finally:
        assert all(code == 0 for code in agents.stop_all().values())


# -- who may talk to whom ------------------------------------------------------------------
def test_an_agent_pinned_to_its_master_runs_nothing_for_another(tmp_path: Path, tag: str,
                                                                  keys: Keys) -> None:
    impostor = tmp_path / "impostor"
    assert cli("loadmaster", "keygen", str(impostor)).returncode == 0
    marker = tmp_path / "ran.txt"
    agents = Agents(tag, free_port(), tmp_path)
    try:
        agents.start("pinned", *keys.agent_args)
        conf = write_job(tmp_path, {"host": "http://127.0.0.1:9/", "users": 1,
                                    "run_time": 1, "agent_timeout": 4},
                         client=MARKING_CLIENT.format(marker=str(marker)))
        # the impostor even authorizes the agent's key: the agent is the one that says no
        r = run_master(tmp_path, conf, tag, "--agents", "1", "--bind",
                       f"127.0.0.1:{agents.port}", "--key", str(impostor),
                       "--authorized-agents", str(keys.authorized))
        assert r.code == 4, r.stderr
        assert not marker.exists()
        log = agents.logs["pinned"].wait_for("failed the CURVE handshake", 10)
        assert "not the master of --master-key" in log
    finally:
        agents.stop_all()


def test_an_agent_whose_key_is_not_authorized_is_refused_and_named_once(
        tmp_path: Path, tag: str, keys: Keys) -> None:
    stranger = tmp_path / "stranger"
    assert cli("loadagent", "keygen", str(stranger)).returncode == 0
    agents = Agents(tag, free_port(), tmp_path)
    try:
        agents.start("stranger", "--key", str(stranger), "--master-key",
                     str(keys.master / "master.key"))
        conf = write_job(tmp_path, {"host": "http://127.0.0.1:9/", "users": 1,
                                    "run_time": 1, "agent_timeout": 4})
        r = run_master(tmp_path, conf, tag, "--agents", "1", "--bind",
                       f"127.0.0.1:{agents.port}", *keys.master_args)
        assert r.code == 4, r.stderr
        print_ = fingerprint(load_public(stranger / "agent.key", ""))
        refusals = re.findall(rf"refused a peer whose key {re.escape(print_)} is not in "
                              rf"--authorized-agents", r.stderr)
        assert len(refusals) == 1, r.stderr  # it redials for 4 s: logged once
    finally:
        agents.stop_all()


def forged_delta(run_id: str, agent: str, ok: int) -> list[bytes]:
    totals = Totals()
    st = totals.op("HttpClient")
    st.hist.record(1_000_000, ok)
    st.ok = ok
    return encode_stats(run_id.encode(), Delta(agent=agent, worker=0, seq=1, second=1,
                                               clients=1, totals=totals, cpu_seconds=0.1,
                                               loop_lag=0.0))


def forged_final(ok: int) -> list[bytes]:
    totals = Totals()
    st = totals.op("HttpClient")
    st.hist.record(1_000_000, ok)
    st.ok = ok
    return encode(Final(worker=0, totals=totals, last_end=1.0, clients=1, aborted=False,
                        start_lag=0.0, stopped_at=1.0, grace=0.0, grace_finished=0,
                        grace_cancelled=0))


def test_peers_without_the_keys_can_neither_join_nor_forge_figures(
        tmp_path: Path, tag: str, target: Target, keys: Keys) -> None:
    stranger = tmp_path / "stranger"
    assert cli("loadagent", "keygen", str(stranger)).returncode == 0
    stranger_pub = load_public(stranger / "agent.key", "")
    stranger_sec = (stranger / "agent.key_secret").read_text()
    secret = re.search(r'secret-key = "(.{40})"', stranger_sec)
    assert secret is not None
    master_pub = load_public(keys.master / "master.key", "")
    agents = Agents(tag, free_port(), tmp_path)
    ctx = zmq.Context()
    socks: list[zmq.Socket[bytes]] = []

    def sock(kind: int, endpoint: str, curve: bool = False) -> zmq.Socket[bytes]:
        s = ctx.socket(kind)
        s.linger = 0
        if curve:  # a CURVE client with a key the master does not know
            s.curve_publickey, s.curve_secretkey = stranger_pub, secret.group(1).encode()
            s.curve_serverkey = master_pub
        s.connect(endpoint)
        socks.append(s)
        return s

    try:
        agents.start("real", *keys.agent_args)
        conf = write_job(tmp_path, {"host": target.url, "users": 2, "hatch_rate": 2,
                                    "run_time": 4, "agent_timeout": 20}, client=AGENT_CLIENT)
        with started_master(tmp_path, conf, tag, "--agents", "1", "--bind",
                            f"127.0.0.1:{agents.port}", "--log-level", "info",
                            *keys.master_args) as proc:
            err = LineReader(proc.stderr)
            out = LineReader(proc.stdout)
            m = re.search(r"run (\w+): .* stats on port (\d+)", err.wait_for("stats on port", 30))
            assert m is not None
            run_id, stats_port = m.group(1), int(m.group(2))
            control = f"tcp://127.0.0.1:{agents.port}"
            stats = f"tcp://127.0.0.1:{stats_port}"
            out.wait_for("current rps", 30)
            # a plaintext peer, then one with an unknown key: REGISTER gets no answer
            for curve in (False, True):
                dealer = sock(zmq.DEALER, control, curve)
                dealer.send_multipart(encode(Register(
                    name="intruder", hostname="h", cores=1, workers=1, version="0",
                    pid=1, max_message=1 << 20, token="")))
                dealer.send_multipart(forged_final(10**9))
                assert not dealer.poll(1500), "a peer without the keys got an answer"
            # and forged deltas on the stats port, from both, go nowhere
            pubs = [sock(zmq.PUB, stats), sock(zmq.PUB, stats, curve=True)]
            for _ in range(20):
                for pub in pubs:
                    pub.send_multipart(forged_delta(run_id, "real", 10**9))
                time.sleep(0.05)
            code = proc.wait(60)
            stdout = out.text()
        served = target.counts()["ok"]
        assert code == 0, stdout
        final = stdout[stdout.rfind("final benchmark:"):]
        assert f"success count                 :{served}\n" in final
        assert "(INCOMPLETE)" not in final
        # the live blocks never showed a forged figure either
        live = [int(n) for n in re.findall(r"success count\s+:(\d+)", stdout)]
        assert max(live) == served
    finally:
        for s in socks:
            s.close()
        ctx.term()
        agents.stop_all()


def test_an_agent_refused_learns_nothing_of_the_run(tmp_path: Path, tag: str,
                                                     target: Target) -> None:
    agents = Agents(tag, free_port(), tmp_path)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        agents.start("first")
        conf = write_job(tmp_path, {"host": target.url, "users": 1, "run_time": 3,
                                    "agent_timeout": 20}, client=AGENT_CLIENT)
        with started_master(tmp_path, conf, tag, "--agents", "1", "--bind",
                            f"127.0.0.1:{agents.port}") as proc:
            LineReader(proc.stdout).wait_for("current rps", 30)
            dealer.connect(f"tcp://127.0.0.1:{agents.port}")
            dealer.send_multipart(encode(Register(
                name="second", hostname="h", cores=1, workers=1, version="0", pid=1,
                max_message=1 << 20, token="")))
            assert dealer.poll(5000)
            welcome = decode(dealer.recv_multipart())
            assert isinstance(welcome, Welcome) and not welcome.accepted
            assert welcome.stats_port == 0  # where the run's stats go is not its business
            assert proc.wait(30) == 0
    finally:
        dealer.close()
        ctx.term()
        agents.stop_all()


def test_an_agent_imports_the_client_only_from_inside_the_jobs_bundle(
        tag: str, tmp_path: Path) -> None:
    """A master (any master: this one has no keys) cannot make an agent import a file
    already on its disk: an absolute class_file, or one that climbs out."""
    marker = tmp_path / "outside-ran.txt"
    outside = tmp_path / "outside.py"
    outside.write_text(MARKING_CLIENT.format(marker=str(marker)))
    fake = FakeMaster()
    agents = Agents(tag, fake.port, tmp_path)
    try:
        agents.start("careful")
        identity = fake.accept()
        climb = "../" * 12 + str(outside).lstrip("/")  # up to / from the run directory
        for n, class_file in enumerate((str(outside), climb, "c.py/../../x.py")):
            job = Job(run_id=f"{n:016x}", host="h", class_file=class_file, class_name="",
                      custom_conf={}, users=1, hatch_rate=1, run_time=1, wait_time=0,
                      stop_grace=0, total_workers=1, worker_ids=[0],
                      bundle=[BundleFile(path="c.py", mode=0o644, data=b"")])
            fake.sock.send_multipart([identity, *encode(job)])
            msg = fake.expect(JobFailed, 30)
            assert "not a path inside the job's bundle" in msg.error or \
                "not a file of the job's bundle" in msg.error, msg.error
            fake.sock.send_multipart([identity, *encode(RunDone(run_id=job.run_id))])
            agents.logs["careful"].wait_for_count("run directory removed", n + 1, 30)
        assert not marker.exists()
    finally:
        agents.stop_all()
        fake.close()


# -- safe defaults ---------------------------------------------------------------------------
def test_a_master_beyond_loopback_needs_keys_or_insecure(tmp_path: Path, tag: str,
                                                         target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 1, "run_time": 1})
    r = run_master(tmp_path, conf, tag, "--bind", "0.0.0.0")
    assert r.code == 2
    assert "--bind 0.0.0.0" in r.stderr and "--key" in r.stderr and "--insecure" in r.stderr
    assert target.counts()["ok"] == 0  # nothing started
    r = run_master(tmp_path, conf, tag, "--bind", "0.0.0.0", "--insecure")
    assert r.code == 0, r.stderr
    assert "warning: --insecure" in r.stderr


def test_an_agent_dialing_beyond_loopback_needs_the_masters_key_or_insecure(
        tag: str) -> None:
    far = "tcp://192.0.2.1:5556"  # TEST-NET-1: never routed
    r = cli("loadagent", "start", "--master", far)
    assert r.returncode == 2
    assert "--master-key" in r.stderr and "--insecure" in r.stderr
    proc = start_agent(tag, far, "far", "--insecure", "--workers", "1")
    try:
        log = LineReader(proc.stdout)
        log.wait_for("--insecure: the master at", 20)
        log.wait_for("dialing master", 20)  # up, its signal handlers in place
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
