"""The embedded agent: a `loadagent start` child process that only this master accepts.

It gets a one-time token through its environment (not its command line), and when the
master has CURVE keys a key pair made for this run (the master accepts only it), runs in its
own process group (Ctrl-C belongs to the master), and exits when its stdin, a pipe
from the master, closes: it never outlives the master.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys

from protocol.wire.messages import KEYS_ENV, TOKEN_ENV

EXIT_WAIT = 5.0


class LocalAgent:
    def __init__(self, workers: int | None, cpu_list: str,
                 keys: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.token = secrets.token_hex(16)
        self._keys = keys  # its CURVE pair and the master's public key, when the master has keys
        self._workers = workers
        self._cpu_list = cpu_list
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, endpoint: str) -> None:
        cmd = [sys.executable, "-m", "loadagent", "start", "--master", endpoint,
               "--embedded", "--name", "local", "--log-level", "warning"]
        if self._workers:
            cmd += ["--workers", str(self._workers)]
        if self._cpu_list:
            cmd += ["--cpu-list", self._cpu_list]
        env = {**os.environ, TOKEN_ENV: self.token}
        if self._keys is not None:
            env[KEYS_ENV] = b" ".join(self._keys).decode("ascii")
        else:  # the master checked its own address (loopback, or --insecure)
            cmd.append("--insecure")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env,
                                      start_new_session=True)

    @property
    def exitcode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stop(self) -> None:
        """Close its stdin (it exits by itself), then kill its group if it lingers."""
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._proc = None
