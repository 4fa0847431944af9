"""`loadagent status`: is an agent on this machine alive, and what is it doing?

A running agent rewrites a small status file every second from its event loop: its
name, the master it dials, its state (dialing, idle, running, leaving: never the run
id, which would let a local user aim forged deltas at the run) and when. The files live
in a folder of the user's own, ``loadagent-status-UID`` in the temporary folder (mode
0700, owned by that user, not a link: another local user cannot plant or read files
there), one ``PID.json`` per agent, written to a fresh temporary name and renamed.
``loadagent status`` reads that folder: an agent whose file is fresh (its loop turns)
and whose process exists is healthy; files of agents that are gone are removed. A
container's HEALTHCHECK runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["BEAT", "MAX_AGE", "AgentStatus", "StatusFile", "read_statuses", "status_dir"]

BEAT = 1.0  # seconds between writes
MAX_AGE = 5.0  # a file older than this: the agent's loop is stuck (or it is gone)
MAX_FILE = 4096
CLOCK_SLACK = 5.0  # a file from the future beyond this is not believed


@dataclass(frozen=True)
class AgentStatus:
    pid: int
    name: str
    master: str
    state: str  # dialing, idle (registered), running, leaving
    at: float  # wall clock of the write

    @property
    def alive(self) -> bool:
        """Whether its process still exists."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def healthy(self, now: float, max_age: float = MAX_AGE) -> bool:
        """Alive, and its loop wrote the file within ``max_age`` seconds."""
        return now - max_age <= self.at <= now + CLOCK_SLACK and self.alive


def status_dir(parent: Path | None = None) -> Path:
    return Path(parent or tempfile.gettempdir()) / f"loadagent-status-{os.getuid()}"


def _private(folder: Path, create: bool) -> bool:
    """Whether ``folder`` is ours alone (made 0700 when ``create`` and missing)."""
    if create:
        with contextlib.suppress(FileExistsError, OSError):
            os.mkdir(folder, 0o700)
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO))


class StatusFile:
    """This agent's status file; ``remove()`` when it exits. It writes nothing when the
    folder is not private (``usable`` False): a health check then says unhealthy."""

    def __init__(self, name: str, master: str, parent: Path | None = None) -> None:
        self._name, self._master = name, master
        self.folder = status_dir(parent)
        self.usable = _private(self.folder, create=True)
        self.path = self.folder / f"{os.getpid()}.json"
        if self.usable:
            read_statuses(parent)  # sweeps the files of agents that are gone

    def write(self, state: str) -> None:
        """Replace the file atomically; a failure (a full disk) is not the agent's end."""
        if not self.usable:
            return
        status = AgentStatus(os.getpid(), self._name, self._master, state, time.time())
        with contextlib.suppress(OSError):
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(asdict(status)))
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def read_statuses(parent: Path | None = None) -> list[AgentStatus]:
    """The status of every agent of this user, newest first; the files of agents that
    are gone are removed."""
    folder = status_dir(parent)
    if not _private(folder, create=False):
        return []
    out = []
    for path in folder.glob("*.json"):
        try:
            if path.is_symlink() or path.stat().st_size > MAX_FILE:
                continue
            data = json.loads(path.read_text())
            status = AgentStatus(int(data["pid"]), str(data["name"]), str(data["master"]),
                                 str(data["state"]), float(data["at"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not path.stem.isdigit() or status.pid != int(path.stem):
            continue
        if not status.alive:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        out.append(status)
    return sorted(out, key=lambda s: -s.at)
