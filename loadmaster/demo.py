"""`loadmaster demo`: the seed's example against the example target server, on this machine."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from loadmaster.cli import run_config
from loadmaster.run_options import RunOptions

CONFIG = Path("conf/examples/http_post.yml")
TARGET = Path("examples/target_server.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the target server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the target server did not listen on port {port} within {timeout:g}s")


def run_demo(run_time: str, users: int) -> int:
    if not CONFIG.is_file() or not TARGET.is_file():
        print(f"loadmaster demo: run it from the project's folder (needs {CONFIG} and {TARGET})",
              file=sys.stderr)
        return 2
    port = _free_port()
    # its own session: the first Ctrl-C stops the run gracefully, not the target under it
    target = subprocess.Popen([sys.executable, str(TARGET), "--port", str(port)],
                              stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_port(port, target)
        print(f"demo: target server on http://127.0.0.1:{port}/test; running {CONFIG} "
              f"with {users} users for {run_time}", file=sys.stderr)
        overrides = {"host": f"http://127.0.0.1:{port}/test", "users": users,
                     "hatch_rate": max(1, users // 2), "run_time": run_time, "worker": "auto",
                     "enable_dash": False}
        return run_config(CONFIG, overrides, RunOptions())
    finally:
        target.terminate()
        try:
            target.wait(5)
        except subprocess.TimeoutExpired:
            target.kill()
            target.wait()
