"""The benchmark targets: nginx pinned to CPU 0, or the counting target as a fallback.

Both listen on 127.0.0.1 on a free port and are started pinned with `taskset`;
everything they write (nginx config, pid, logs, temp files) lives in a
temporary directory removed when the context exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVER_CPU, CLIENT_CPU = 0, 1
COUNTING_TARGET = Path(__file__).resolve().parent / "_counting_target.py"

# `return` runs before the static-file handler, so POST gets 200 too (not 405).
NGINX_CONF = """\
worker_processes {workers};
worker_rlimit_nofile {nofile};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok"; }}
    }}
}}
"""


@dataclass(frozen=True)
class Target:
    port: int
    description: str
    counting: bool  # answers GET /__count
    pid: int = 0  # the server's process (nginx: its master, the workers its children)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def served(self) -> int:
        """Responses answered so far (counting target only)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        with opener.open(self.url("/__count"), timeout=5) as resp:
            count = json.load(resp)["served"]
        if not isinstance(count, int):
            raise RuntimeError(f"the counting target answered {count!r} for served")
        return count


def raise_fd_limit() -> int:
    """Raise this process's (and so its children's) open-file limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(command: list[str], cpu: int | str) -> list[str]:
    """`command` run under `taskset -c cpu`, `cpu` a CPU or a list (`0,1`); unchanged on
    one core or without taskset."""
    taskset = shutil.which("taskset")
    if taskset and (os.cpu_count() or 1) > 1:
        return [taskset, "-c", str(cpu), *command]
    return command


def find_nginx() -> str | None:
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return shutil.which("nginx", path=path)


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the target server exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # nothing to wait on but the port itself
    raise RuntimeError(f"the target server is not listening on port {port} after {timeout} s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the process group (nginx: fast shutdown), SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def target_server(use_nginx: bool = True, counting: bool = False,
                  connections: int = 4096, workers: int = 1,
                  cpu: int | None = SERVER_CPU) -> Iterator[Target]:
    """Start nginx (or the counting target) pinned to `cpu`; yield it, then stop it.

    `counting` asks for the counting target even when nginx is installed;
    `connections` is nginx's worker_connections (its open-file limit is set above it),
    `workers` its worker processes; `cpu` None leaves the target unpinned.
    """
    port = free_port()
    nginx = find_nginx() if use_nginx and not counting else None
    tmp = Path(tempfile.mkdtemp(prefix="bench-target-"))
    try:
        if nginx:
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, connections=connections,
                                              nofile=connections + 1024, workers=workers))
            command = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
            description = (f'nginx, {workers} worker{"s" if workers > 1 else ""}, '
                           'return 200 "ok"')
        else:
            command = [sys.executable, str(COUNTING_TARGET), str(port)]
            description = "bench/_counting_target.py (uvloop + httptools)"
        process = subprocess.Popen(command if cpu is None else pinned(command, cpu),
                                   start_new_session=True)
        try:
            wait_listening(port, process)
            yield Target(port, description, counting=not nginx, pid=process.pid)
        finally:
            stop_process(process)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
