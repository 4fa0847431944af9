"""`loadmaster run` end to end: real master, embedded agent, workers and HTTP target on loopback."""

from __future__ import annotations

import json
import re
import signal
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from protocol.histogram import MAX_INDEX
from protocol.wire.codec import HEADER, MAGIC, PROTOCOL_VERSION
from protocol.wire.messages import Delta
from tests.e2e_helpers import (
    LineReader,
    Result,
    Target,
    run_master,
    started_master,
    tagged_pids,
    write_job,
)


@pytest.fixture
def failing_target(tag: str) -> Iterator[Target]:
    t = Target(tag, fail_every=4)
    yield t
    t.stop()


def test_seed_client_success_count_equals_what_the_server_answered(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 12, "hatch_rate": 12,
                                "run_time": 3, "worker": 2})
    r = run_master(tmp_path, conf, tag)
    assert r.code == 0, r.stderr
    served = target.counts()
    assert served["ok"] > 100
    assert r.final_int("success count") == served["ok"]
    assert r.final_int("fail count") == 0 == served["fail"]
    assert r.final_int("users") == 12
    assert r.final()["accuracy"] == "100.00%"
    # live blocks came before the final one, with the seed's fields
    assert r.stdout.count("success count") >= 3
    assert "current rps" in r.stdout
    for field in ("95% response time", "99% response time", "99.9% response time"):
        assert r.final()[field].endswith("ms")


def test_failing_share_gives_that_fail_count_and_error_table(
        tmp_path: Path, tag: str, failing_target: Target) -> None:
    conf = write_job(tmp_path, {"host": failing_target.url, "users": 8, "run_time": 2,
                                "worker": 2})
    r = run_master(tmp_path, conf, tag)
    assert r.code == 0, r.stderr  # failed calls alone do not change the exit code
    served = failing_target.counts()
    assert served["fail"] > 0
    assert r.final_int("success count") == served["ok"]
    assert r.final_int("fail count") == served["fail"]
    errors = r.section("errors:")
    assert len(errors) == 1
    count, name, etype, *message = errors[0].split()
    assert int(count) == served["fail"]
    assert (name, etype) == ("HttpClient", "ValueError")
    assert " ".join(message) == "response with err http status code:500"
    accuracy = float(r.final()["accuracy"].rstrip("%"))
    assert accuracy == pytest.approx(100 * served["ok"] / (served["ok"] + served["fail"]), abs=0.01)


CUSTOM_CLIENT = '''
import json
import os
from protocol import ClientProtocol

class Recorder(ClientProtocol):
    @staticmethod
    async def global_init(custom_conf=None):
        # async global_init is accepted; the data file was shipped with the job
        with open(custom_conf["test_data_file"]) as f:
            data = f.read()
        with open(custom_conf["report_to"] + f".{os.getpid()}", "w") as f:
            json.dump({"conf": custom_conf, "data": data}, f)

    async def execute(self):
        return None
'''


def test_custom_keys_reach_global_init_and_system_keys_do_not(tmp_path: Path, tag: str) -> None:
    report = tmp_path / "seen"
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 2, "run_time": 1,
                                "worker": 2, "report_to": str(report),
                                "nested": {"a": [1, 2.5, "x"]}, "run_tme": 3},
                     client=CUSTOM_CLIENT, client_path="clients/recorder.py")
    r = run_master(tmp_path, conf, tag)
    assert r.code == 0, r.stderr
    assert "did you mean 'run_time'" in r.stderr
    seen = [json.loads(p.read_text()) for p in tmp_path.glob("seen.*")]
    assert len(seen) == 2  # once per worker process
    for s in seen:
        assert s["data"] == '{"hello": "world"}'
        assert s["conf"]["nested"] == {"a": [1, 2.5, "x"]}
        assert s["conf"]["run_tme"] == 3
        assert s["conf"]["report_to"] == str(report)
        for system_key in ("host", "users", "run_time", "worker", "wait_time", "enable_dash",
                           "benchmark_class_file", "print_interval"):
            assert system_key not in s["conf"]


@pytest.mark.parametrize("body, first, expect", [
    # a syntax error: the user's file, line and caret first; none of our frames
    ("from protocol import ClientProtocol\nclass C(ClientProtocol):\n    async def execute(self)\n",
     "  File ", "SyntaxError: expected ':'"),
    # an import or global_init error: the traceback starts at the user's own frame
    ("import no_such_module_for_the_test\n", "Traceback (most recent call last):\n"
     '  File "broken.py", line 1', "ModuleNotFoundError: No module named "
                                    "'no_such_module_for_the_test'"),
    ("from protocol import ClientProtocol\nclass C(ClientProtocol):\n"
     "    @staticmethod\n    def global_init(custom_conf=None):\n"
     "        raise RuntimeError('global_init broke on purpose')\n"
     "    async def execute(self):\n        return None\n",
     'Traceback (most recent call last):\n  File "broken.py", line 5, in global_init',
     "global_init broke on purpose"),
])
def test_broken_client_file_exits_3_with_the_users_frames_first_and_no_load(
        tmp_path: Path, tag: str, target: Target, body: str, first: str, expect: str) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "run_time": 2, "worker": 2},
                     client=body, client_path="broken.py")
    r = run_master(tmp_path, conf, tag)
    assert r.code == 3, (r.stdout, r.stderr)
    assert first in r.stderr and expect in r.stderr
    assert "broken.py" in r.stderr
    for ours in ("loadmaster/", "loadagent/", "importlib", "loadagent-"):
        assert ours not in r.stderr, r.stderr  # no frame and no run directory of ours
    assert r.stderr.startswith(first) or f"\n{first}" in r.stderr  # the user's frame first
    # once, not once per worker
    assert sum(line.endswith(expect) for line in r.stderr.splitlines()) == 1, r.stderr
    assert "final benchmark" not in r.stdout
    served = target.counts()
    assert (served["ok"], served["fail"]) == (0, 0)


@pytest.mark.parametrize("body, expect", [
    ("x = 1\n", "broken.py: defines no ClientProtocol subclass (write `from protocol import "
                "ClientProtocol` and subclass it)"),
    ("from protocol import ClientProtocol\nclass A(ClientProtocol):\n    pass\n"
     "class B(ClientProtocol):\n    pass\n",
     "broken.py: defines several ClientProtocol subclasses (A, B); choose one with "
     "benchmark_class"),
])
def test_a_client_file_without_one_subclass_is_one_line_not_a_traceback(
        tmp_path: Path, tag: str, target: Target, body: str, expect: str) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "run_time": 2, "worker": 2},
                     client=body, client_path="broken.py")
    r = run_master(tmp_path, conf, tag)
    assert r.code == 3, (r.stdout, r.stderr)
    assert expect in r.stderr
    assert r.stderr.count(expect) == 1  # once, not once per worker
    assert "Traceback" not in r.stderr and "loadagent/" not in r.stderr, r.stderr


SLOW_CLIENT = '''
import asyncio
from protocol import ClientProtocol

class Slow(ClientProtocol):
    async def execute(self):
        await asyncio.sleep(0.7)
'''


def test_run_time_is_honoured_and_in_flight_calls_finish(tmp_path: Path, tag: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 10, "hatch_rate": 1000,
                                "run_time": 2,
                                "worker": 2, "stop_grace": 3},
                     client=SLOW_CLIENT, client_path="slow.py")
    started = time.monotonic()
    r = run_master(tmp_path, conf, tag)
    wall = time.monotonic() - started
    assert r.code == 0, r.stderr
    run_time = r.final_float("run time")
    assert 2.0 <= run_time <= 2.0 + 1.0 + 0.7  # the last call started before run_time ends
    # every call that started ran to completion: 10 clients x 3 calls each (0, .7, 1.4)
    assert r.final_int("success count") == 30
    assert r.final_int("fail count") == 0
    assert wall < 20


def test_calls_still_running_after_the_grace_are_cancelled_as_failures(
        tmp_path: Path, tag: str) -> None:
    client = SLOW_CLIENT.replace("0.7", "30")
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 3, "run_time": 1,
                                "worker": 1, "stop_grace": 1},
                     client=client, client_path="slow.py")
    r = run_master(tmp_path, conf, tag)
    assert r.code == 0, r.stderr
    assert r.final_int("fail count") == 3
    assert r.final_float("run time") < 1 + 1 + 1
    (line,) = r.section("errors:")
    assert "Cancelled" in line and line.split()[0] == "3"


def test_sigint_prints_the_final_block_and_leaves_no_process(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 6, "run_time": 60, "worker": 2})
    with started_master(tmp_path, conf, tag) as proc:
        out = LineReader(proc.stdout)
        err = LineReader(proc.stderr)
        out.wait_for("current rps", timeout=30)
        assert len(tagged_pids(tag)) >= 5  # master, agent, forkserver, 2 workers (+ target)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        result = Result(code, out.text(), err.text())
    assert result.code == 130, result.stderr
    assert "interrupted" in result.stderr
    served = target.counts()
    assert result.final_int("success count") == served["ok"] > 0
    assert result.final_float("run time") < 30
    # only the target is left of what this test started
    assert tagged_pids(tag) == [target.proc.pid]


def test_second_sigint_aborts_at_once(tmp_path: Path, tag: str) -> None:
    client = SLOW_CLIENT.replace("0.7", "30")
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 4, "run_time": 60,
                                "worker": 1, "stop_grace": 30},
                     client=client, client_path="slow.py")
    with started_master(tmp_path, conf, tag) as proc:
        out = LineReader(proc.stdout)
        err = LineReader(proc.stderr)
        out.wait_for("current rps", timeout=30)
        proc.send_signal(signal.SIGINT)
        err.wait_for("stopping gracefully", timeout=10)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        took = time.monotonic() - started
        result = Result(code, out.text(), err.text())
    assert code == 130
    assert took < 10  # not the 30 s grace
    assert "final benchmark: (INCOMPLETE)" in result.stdout or "final benchmark:" in result.stdout
    assert result.final_int("fail count") == 4  # the four calls were cancelled
    (line,) = result.section("errors:")
    assert line.split()[0] == "4"
    assert "call cancelled by an abort: interrupted twice" in line


def test_bad_config_names_file_and_key(tmp_path: Path, tag: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": "ten", "run_time": 1})
    r = run_master(tmp_path, conf, tag)
    assert r.code == 2
    assert str(conf) in r.stderr and "'users'" in r.stderr and "ten" in r.stderr


def test_kill9_master_stops_embedded_load_within_5s_and_leaves_no_process(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 6, "run_time": 60, "worker": 2})
    with started_master(tmp_path, conf, tag) as proc:
        out = LineReader(proc.stdout)
        LineReader(proc.stderr)
        out.wait_for("current rps", timeout=30)
        proc.kill()
        killed = time.monotonic()
        # the embedded agent sees its stdin close, its workers see their pipe close
        last, last_change = target.counts()["ok"], time.monotonic()
        while time.monotonic() < killed + 8:
            now_count = target.counts()["ok"]
            if now_count != last:
                last, last_change = now_count, time.monotonic()
            time.sleep(0.1)
    assert last_change - killed < 5, f"load went on {last_change - killed:.1f}s"
    deadline = time.monotonic() + 10
    while tagged_pids(tag) != [target.proc.pid]:
        assert time.monotonic() < deadline, f"left running: {tagged_pids(tag)}"
        time.sleep(0.1)


DYING_CLIENT = '''
import os
import aiohttp
from protocol import ClientProtocol

class Dying(ClientProtocol):
    calls = 0

    def init_before_use(self, host):
        self._session = aiohttp.ClientSession()
        self._url = host

    async def shutdown(self):
        await self._session.close()

    async def execute(self):
        async with self._session.post(self._url, data=b"x") as response:
            await response.read()
        Dying.calls += 1
        if Dying.calls == 300:
            try:  # the first worker of the run directory to get here dies
                os.close(os.open("died", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os._exit(7)
'''


def test_a_worker_that_dies_is_reported_with_its_exit_code(
        tmp_path: Path, tag: str, target: Target) -> None:
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "run_time": 4, "worker": 2},
                     client=DYING_CLIENT, client_path="dying.py")
    r = run_master(tmp_path, conf, tag)
    assert r.code == 5, (r.stdout, r.stderr)
    notes = [line for line in r.stdout.splitlines() if line.startswith("worker ")]
    assert len(notes) == 1
    assert "worker exited with code 7 before its totals" in notes[0]
    assert "counted up to its last live delta" in notes[0]
    # the survivor's totals are exact; the dead one's count stops at its last delta, and
    # the block says so: never exact
    assert "its figures are an estimate, not exact" in notes[0]
    assert "final benchmark: (INCOMPLETE)" in r.stdout
    assert 0 < r.final_int("success count") <= target.counts()["ok"]


SLOW_SHUTDOWN_CLIENT = '''
import asyncio
from protocol import ClientProtocol

class SlowShutdown(ClientProtocol):
    async def execute(self):
        await asyncio.sleep(0.01)

    async def shutdown(self):
        await asyncio.sleep(30)
'''


def test_second_sigint_during_client_shutdown_still_gets_every_workers_totals(
        tmp_path: Path, tag: str) -> None:
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 4, "run_time": 60,
                                "worker": 2, "stop_grace": 20},
                     client=SLOW_SHUTDOWN_CLIENT, client_path="slow_shutdown.py")
    with started_master(tmp_path, conf, tag) as proc:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        out.wait_for("current rps", timeout=30)
        proc.send_signal(signal.SIGINT)
        err.wait_for("stopping gracefully", timeout=10)
        time.sleep(0.5)  # the workers are now inside shutdown(), which takes 30 s
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        took = time.monotonic() - started
        result = Result(code, out.text(), err.text())
    assert code == 130
    assert took < 5
    # the totals came from both workers' finals, not from live deltas
    assert "last live delta" not in result.stdout, result.stdout
    assert result.final_int("success count") > 0


def test_workers_not_ready_within_agent_timeout_is_an_error_not_a_hang(
        tmp_path: Path, tag: str) -> None:
    client = ('import time\nfrom protocol import ClientProtocol\n'
              'class Sleepy(ClientProtocol):\n'
              '    @staticmethod\n    def global_init(custom_conf=None):\n'
              '        time.sleep(60)\n'
              '    async def execute(self):\n        return None\n')
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 1, "run_time": 1,
                                "worker": 1, "agent_timeout": 2},
                     client=client, client_path="sleepy.py")
    started = time.monotonic()
    r = run_master(tmp_path, conf, tag)
    assert r.code == 5, (r.stdout, r.stderr)
    assert "not ready within 2s (agent_timeout): agent local: no READY" in r.stderr
    assert time.monotonic() - started < 20


def test_a_large_custom_value_reaches_global_init(tmp_path: Path, tag: str) -> None:
    report = tmp_path / "seen"
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 1, "run_time": 1,
                                "worker": 1, "report_to": str(report), "big": "x" * 200_000},
                     client=CUSTOM_CLIENT, client_path="clients/recorder.py")
    r = run_master(tmp_path, conf, tag)
    assert r.code == 0, r.stderr
    (seen,) = [json.loads(p.read_text()) for p in tmp_path.glob("seen.*")]
    assert seen["conf"]["big"] == "x" * 200_000


def test_a_busy_control_port_is_a_usage_error(tmp_path: Path, tag: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 1, "run_time": 1})
        r = run_master(tmp_path, conf, tag, "--agents", "1", "--bind", f"127.0.0.1:{port}")
    assert r.code == 2, r.stderr
    assert f"--bind 127.0.0.1:{port}" in r.stderr and "in use" in r.stderr


def test_a_worker_stuck_in_global_init_dies_with_its_killed_agent(
        tmp_path: Path, tag: str) -> None:
    import os

    client = ('import time\nfrom protocol import ClientProtocol\n'
              'class Stuck(ClientProtocol):\n'
              '    @staticmethod\n    def global_init(custom_conf=None):\n'
              '        open("in_global_init", "w").close()\n'
              '        time.sleep(120)  # synchronous: the worker cannot read its pipe\n'
              '    async def execute(self):\n        return None\n')
    conf = write_job(tmp_path, {"host": "http://127.0.0.1:1/", "users": 1, "run_time": 1,
                                "worker": 1, "agent_timeout": 60},
                     client=client, client_path="stuck.py")
    with started_master(tmp_path, conf, tag) as proc:
        LineReader(proc.stdout)
        LineReader(proc.stderr)
        deadline = time.monotonic() + 30
        agent = None
        while agent is None:
            assert time.monotonic() < deadline, "no agent process"
            for pid in tagged_pids(tag):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"loadagent\x00start" in f.read():
                        agent = pid
            time.sleep(0.1)
        while len(tagged_pids(tag)) < 4:  # master, agent, forkserver, worker
            assert time.monotonic() < deadline, tagged_pids(tag)
            time.sleep(0.1)
        time.sleep(1.0)  # inside global_init by now
        os.kill(agent, signal.SIGKILL)
        code = proc.wait(30)
    assert code == 5
    # the forkserver exits with its agent, and the worker with its forkserver
    deadline = time.monotonic() + 10
    while tagged_pids(tag):
        assert time.monotonic() < deadline, f"left running: {tagged_pids(tag)}"
        time.sleep(0.1)


def test_a_forged_delta_with_a_bad_bucket_is_dropped_and_the_run_stays_exact(
        tmp_path: Path, tag: str, target: Target) -> None:
    """A delta whose histogram holds a bucket index out of range, sent to the master's
    stats socket mid-run as worker 0 of the run, is dropped whole (a warning says so);
    the live figures and the final block count only what the target served."""
    conf = write_job(tmp_path, {"host": target.url, "users": 4, "hatch_rate": 4,
                                "run_time": 4, "worker": 1})
    with started_master(tmp_path, conf, tag, "--log-level", "info") as proc:
        err = LineReader(proc.stderr)
        out = LineReader(proc.stdout)
        line = err.wait_for("stats on port", 30)
        m = re.search(r"run ([0-9a-f]{16}): .* stats on port (\d+)", line)
        assert m, line
        run_id, port = m.group(1), int(m.group(2))
        out.wait_for("current rps", 15)  # the load runs
        op = ["HttpClient", 5, 0, 5_000, 1_000, 1_000, array("H", [MAX_INDEX + 1]).tobytes(),
              array("I", [5]).tobytes(), [], 0, 0, [], False]
        body = msgpack.packb(["local", 0, 1_000_000, 2, 1, [[op], []], 0.1, 0.0, 0.0],
                             use_bin_type=True)
        frames = [run_id.encode(), HEADER.pack(MAGIC, PROTOCOL_VERSION, Delta.TYPE), body]
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        pub.linger = 1000
        pub.connect(f"tcp://127.0.0.1:{port}")
        try:
            for _ in range(20):  # PUB/SUB: the first ones may go before the link is up
                pub.send_multipart(frames)
                time.sleep(0.05)
        finally:
            pub.close()
            ctx.term()
        assert proc.wait(60) == 0
        stdout, stderr = out.text(), err.text()
    assert "dropped a bad stats message" in stderr and "out of range" in stderr, stderr
    served = target.counts()["ok"]
    final = Result(0, stdout, stderr)
    assert final.final_int("success count") == served > 0
