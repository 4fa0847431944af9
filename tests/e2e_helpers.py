"""Real processes on loopback for end-to-end tests: a counting target, loadmaster, agents.

Every process a test starts carries a tag in its environment (children inherit it), so
a test can prove afterwards that none of them, workers included, is still running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TAG_ENV = "LOADTEST_E2E_TAG"
SEED_CLIENT = (ROOT / "examples" / "http_post.py").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tagged_env(tag: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, TAG_ENV: tag, "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag`` (zombies excluded)."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry))
    return found


def wait_no_tagged(tag: str, timeout: float = 10.0) -> list[int]:
    """Wait until no tagged process is alive; returns those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        alive = tagged_pids(tag)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def kill_tagged(tag: str) -> None:
    for pid in tagged_pids(tag):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_serving(proc: subprocess.Popen[Any], probe: Callable[[], object], what: str,
                 timeout: float = 20) -> None:
    """Until ``probe()`` stops raising OSError: a server ``proc`` started serving."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


class Target:
    """examples/target_server.py in a subprocess: answers /test, counts at /__count."""

    def __init__(self, tag: str, fail_every: int = 0, delay_ms: float = 0.0,
                 host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.host = host
        self.port = free_port() if netns is None else 8080
        cmd = [sys.executable, str(ROOT / "examples" / "target_server.py"), "--host", host,
               "--port", str(self.port), "--fail-every", str(fail_every),
               "--delay-ms", str(delay_ms)]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.netns = netns
        self.proc = subprocess.Popen(cmd, env=tagged_env(tag), stdout=subprocess.DEVNULL)
        wait_serving(self.proc, self.counts, "target server")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/test"

    def counts(self) -> dict[str, Any]:
        if self.netns is not None:
            out = subprocess.run(
                ["ip", "netns", "exec", self.netns, sys.executable, "-c",
                 "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=2)"
                 ".read().decode())", f"http://{self.host}:{self.port}/__count"],
                capture_output=True, text=True, timeout=10)
            if out.returncode != 0:
                raise OSError(out.stderr)
            data: dict[str, Any] = json.loads(out.stdout)
            return data
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/__count", timeout=2) as r:
            data = json.loads(r.read())
            return data

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def final(self) -> dict[str, str]:
        """The fields of the final block (label -> value text)."""
        i = self.stdout.rfind("final benchmark:")
        assert i >= 0, f"no final block in output:\n{self.stdout}\n{self.stderr}"
        fields = {}
        for line in self.stdout[i:].splitlines()[1:]:
            m = re.match(r"^(\S[^:]*?)\s*:(.*)$", line)
            if m:
                fields[m.group(1).strip()] = m.group(2).strip()
            elif line.startswith("="):
                break
        return fields

    def final_int(self, name: str) -> int:
        return int(self.final()[name])

    def final_float(self, name: str) -> float:
        return float(self.final()[name].split()[0])

    def section(self, title: str) -> list[str]:
        """Lines of a final-block table such as 'errors:' or 'agents:'."""
        i = self.stdout.rfind("final benchmark:")
        lines = self.stdout[i:].splitlines()
        try:
            start = lines.index(title)
        except ValueError:
            return []
        out = []
        for line in lines[start + 2:]:
            if not line.startswith("  "):
                break
            out.append(line)
        return out


def write_job(workdir: Path, conf: dict[str, Any], client: str = SEED_CLIENT,
              client_path: str = "examples/http_post.py") -> Path:
    """A client file, the seed's data file and a YAML config in ``workdir``."""
    (workdir / client_path).parent.mkdir(parents=True, exist_ok=True)
    (workdir / client_path).write_text(client)
    (workdir / "data").mkdir(exist_ok=True)
    (workdir / "data" / "data2.json").write_text('{"hello": "world"}')
    full = {"benchmark_class_file": f"./{client_path}", "test_data_file": "./data/data2.json",
            "wait_time": 0, "enable_dash": False, "print_interval": 1, **conf}
    path = workdir / "conf.yml"
    path.write_text(yaml.safe_dump(full))
    return path


def master_cmd(conf: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "loadmaster", "run", "-f", str(conf), *args]


def run_master(workdir: Path, conf: Path, tag: str, *args: str, timeout: float = 90) -> Result:
    proc = subprocess.run(master_cmd(conf, *args), cwd=workdir, env=tagged_env(tag),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@contextmanager
def started_master(workdir: Path, conf: Path, tag: str,
                   *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(master_cmd(conf, *args), cwd=workdir, env=tagged_env(tag),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


class LineReader:
    """Reads a process's text stream in a thread, so a test can wait for a line."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(needle in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{needle!r} not seen within {timeout}s; got:\n"
                                         + "".join(self.lines))
                self._cond.wait(left)
            return "".join(self.lines)

    def wait_for_count(self, needle: str, count: int, timeout: float) -> list[str]:
        """Wait until ``count`` lines hold ``needle``; returns every line read so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(needle in line for line in self.lines) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{needle!r} not seen {count} times within "
                                         f"{timeout}s; got:\n" + "".join(self.lines))
                self._cond.wait(left)
            return [line.rstrip("\n") for line in self.lines]

    def text(self, join_timeout: float = 10.0) -> str:
        self._thread.join(join_timeout)
        with self._cond:
            return "".join(self.lines)


def start_agent(tag: str, master: str, name: str, *args: str,
                netns: str | None = None, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "loadagent", "start", "--master", master, "--name", name,
           *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.Popen(cmd, env=tagged_env(tag, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            cwd=cwd)


def new_tag() -> str:
    return uuid.uuid4().hex


class Agents:
    """`loadagent start` processes dialing one master address."""

    def __init__(self, tag: str, port: int, tmp: Path) -> None:
        self.tag = tag
        self.master = f"tcp://127.0.0.1:{port}"
        self.port = port
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.logs: dict[str, LineReader] = {}
        self.cwd = tmp / "agents-cwd"  # not where the job is: agents get it shipped
        self.cwd.mkdir()

    def start(self, name: str, *args: str) -> subprocess.Popen[str]:
        proc = start_agent(self.tag, self.master, name, "--workers", "1", *args,
                           env={"TEST_AGENT": name}, cwd=self.cwd)
        self.procs[name] = proc
        self.logs[name] = LineReader(proc.stdout)
        return proc

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every agent still running; their exit codes (None: had to be killed)."""
        codes: dict[str, int | None] = {}
        running = {name: p for name, p in self.procs.items() if p.poll() is None}
        for proc in running.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in running.items():
            try:
                codes[name] = proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
        return codes


@dataclass
class Keys:
    """Keys made as the README says: `loadmaster keygen`, `loadagent keygen` (one pair
    shared by every agent), the agent's public key copied into an authorized folder."""

    master: Path
    agent: Path
    authorized: Path

    @property
    def master_args(self) -> tuple[str, ...]:
        return ("--key", str(self.master), "--authorized-agents", str(self.authorized))

    @property
    def agent_args(self) -> tuple[str, ...]:
        return ("--key", str(self.agent), "--master-key", str(self.master / "master.key"))


def make_keys(folder: Path) -> Keys:
    """Keys in ``folder``, made by the real keygen commands."""
    keys = Keys(folder / "master-keys", folder / "agent-keys", folder / "authorized")
    for program, where in (("loadmaster", keys.master), ("loadagent", keys.agent)):
        subprocess.run([sys.executable, "-m", program, "keygen", str(where)], check=True,
                       capture_output=True, timeout=30)
    keys.authorized.mkdir()
    shutil.copy(keys.agent / "agent.key", keys.authorized)
    return keys
