"""`loadagent status`: true while an agent's loop turns, false when it is stuck or gone
(what docker/Dockerfile's HEALTHCHECK runs)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from loadagent.status import StatusFile, read_statuses, status_dir
from tests.e2e_helpers import LineReader, free_port, start_agent, tagged_env


def status(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadagent", "status", *args],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                          env=tagged_env("status", TMPDIR=str(tmp)))


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_status_follows_an_agent_alive_stuck_and_gone(tag: str, tmp_path: Path) -> None:
    assert status(tmp_path).returncode == 1  # none yet
    master = f"tcp://127.0.0.1:{free_port()}"  # nobody there: the agent keeps dialing
    proc = start_agent(tag, master, "watched", "--workers", "1",
                       env={"TMPDIR": str(tmp_path)})
    log = LineReader(proc.stdout)
    try:
        log.wait_for("dialing master", 30)
        assert wait_for(lambda: status(tmp_path).returncode == 0, 10)
        r = status(tmp_path)
        assert f"agent watched (pid {proc.pid}): ok, dialing, master {master}" in r.stdout
        os.kill(proc.pid, signal.SIGSTOP)  # a loop that does not turn
        try:
            assert wait_for(lambda: status(tmp_path, "--max-age", "2").returncode == 1, 10)
            assert "STUCK" in status(tmp_path, "--max-age", "2").stdout
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert wait_for(lambda: status(tmp_path, "--max-age", "2").returncode == 0, 10)
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    r = status(tmp_path)
    assert r.returncode == 1 and "no healthy loadagent" in r.stderr
    assert not list(status_dir(tmp_path).iterdir())  # it removed its file


def test_status_files_are_private_and_only_believed_when_they_can_be_true(
        tmp_path: Path) -> None:
    folder = status_dir(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    folder.symlink_to(tmp_path)  # a folder planted by someone else: not followed
    assert not StatusFile("x", "tcp://m:1", tmp_path).usable
    StatusFile("x", "tcp://m:1", tmp_path).write("idle")
    assert victim.read_text() == "precious" and status(tmp_path).returncode == 1
    folder.unlink()

    mine = StatusFile("me", "tcp://m:1", tmp_path)
    assert mine.usable and stat.S_IMODE(folder.stat().st_mode) == 0o700
    mine.write("idle")
    now = time.time()
    assert [(s.name, s.healthy(now)) for s in read_statuses(tmp_path)] == [("me", True)]
    # a file from the future, one naming another pid, one of a process that is gone
    dead = subprocess.Popen(["true"])
    dead.wait()
    forged = {"1.json": {"pid": 1, "at": now + 3600},
              "2.json": {"pid": os.getpid(), "at": now},
              f"{dead.pid}.json": {"pid": dead.pid, "at": now}}
    for name, fields in forged.items():
        (folder / name).write_text(json.dumps({"name": "forged", "master": "m",
                                               "state": "idle", **fields}))
    found = read_statuses(tmp_path)
    assert [s.name for s in found if s.healthy(now)] == ["me"]
    assert not (folder / f"{dead.pid}.json").exists()  # swept
    mine.remove()
