"""Running a generator as a subprocess while sampling its process tree from /proc.

`run_sampled()` starts a command in its own session, timestamps every line it
prints (stdout and stderr, read by two threads), and every `SAMPLE_EVERY`
seconds records, for each process of its tree (the command and all its
descendants, found through /proc/PID/task/TID/children), the CPU time used so
far (utime + stime) and the resident set size. From these, `Run.cpu_between()`
gives the tree's CPU use over any window, as a fraction of one core.
`TreeSampler` samples another process's tree the same way from a thread (a target
server started elsewhere), on the same clock.

Every process of the tree is stopped when the run ends for any reason
(timeout, Ctrl-C, an error): SIGINT to the command's process group, then
SIGKILL to every process of the tree still alive, including descendants that
live in their own session (the load tester's agent and workers).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

SAMPLE_EVERY = 0.2
STOP_WAIT = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcInfo:
    ppid: int
    start: int  # start time in clock ticks since boot: tells a reused pid apart
    cpu_ticks: int
    rss: int  # bytes
    zombie: bool


@dataclass
class Sample:
    t: float  # seconds since the run started
    procs: dict[int, ProcInfo]
    cpu_busy: dict[int, int]  # per CPU: ticks not idle since boot (/proc/stat)


@dataclass
class Run:
    command: Sequence[str]
    returncode: int | None = None
    timed_out: bool = False
    lines: list[tuple[float, str, str]] = field(default_factory=list)  # (t, stream, line)
    samples: list[Sample] = field(default_factory=list)
    cmdlines: dict[int, str] = field(default_factory=dict)
    elapsed: float = 0.0
    started: float = 0.0  # time.monotonic() at the start: the samples' t count from it

    @property
    def stdout(self) -> str:
        return "".join(line for _, stream, line in self.lines if stream == "stdout")

    @property
    def output(self) -> str:
        return "".join(line for _, _, line in self.lines)

    def first_line(self, pattern: str, after: float = 0.0) -> float | None:
        """When the first line matching `pattern` (a regex) after `after` was printed."""
        regex = re.compile(pattern)
        for t, _, line in self.lines:
            if t >= after and regex.search(line):
                return t
        return None

    def last_line(self, pattern: str) -> float | None:
        regex = re.compile(pattern)
        found = None
        for t, _, line in self.lines:
            if regex.search(line):
                found = t
        return found

    def cpu_between(self, start: float, end: float,
                    pids: set[int] | None = None) -> float | None:
        """CPU used by the tree (or by `pids` of it) between two moments, as a fraction of
        one core; see `tree_cpu`."""
        return tree_cpu(self.samples, start, end, pids)

    def busy_between(self, start: float, end: float) -> float | None:
        """How busy the whole machine was between two moments, in cores (every CPU's
        share not idle, summed)."""
        first = next((s for s in self.samples if s.t >= start), None)
        last = next((s for s in reversed(self.samples) if s.t <= end), None)
        if first is None or last is None or last.t - first.t < 0.5:
            return None
        busy = sum(ticks - first.cpu_busy.get(cpu, 0) for cpu, ticks in last.cpu_busy.items())
        return busy / CLOCK_TICKS / (last.t - first.t)

    def other_load(self, cpu: int, start: float, end: float) -> float | None:
        """How busy `cpu` was with anything but this tree (assumed pinned to it), 0..1."""
        first = next((s for s in self.samples if s.t >= start), None)
        last = next((s for s in reversed(self.samples) if s.t <= end), None)
        tree = self.cpu_between(start, end)
        if first is None or last is None or tree is None or cpu not in last.cpu_busy:
            return None
        busy = (last.cpu_busy[cpu] - first.cpu_busy.get(cpu, 0)) / CLOCK_TICKS
        return max(0.0, busy / (last.t - first.t) - tree)

    def peak_rss(self, pids: set[int], start: float = 0.0, end: float = float("inf")) -> int:
        """The largest resident set size seen for any of `pids` in a window, in bytes."""
        return max((info.rss for s in self.samples if start <= s.t <= end
                    for pid, info in s.procs.items() if pid in pids), default=0)

    def pids(self) -> set[int]:
        return {pid for s in self.samples for pid in s.procs}

    def parent_of(self, pid: int) -> int | None:
        for s in self.samples:
            if pid in s.procs:
                return s.procs[pid].ppid
        return None


def tree_cpu(samples: Sequence[Sample], start: float, end: float,
             pids: set[int] | None = None) -> float | None:
    """CPU used by the sampled processes (all, or `pids`) between two moments, as a
    fraction of one core.

    Uses the first sample at or after `start` and the last at or before `end`;
    a process that exited between them loses its share (the window is meant to
    lie inside the steady state, where the tree does not change).
    """
    first = next((s for s in samples if s.t >= start), None)
    last = next((s for s in reversed(samples) if s.t <= end), None)
    if first is None or last is None or last.t - first.t < 0.5:
        return None
    ticks = 0
    for pid, info in last.procs.items():
        if pids is not None and pid not in pids:
            continue
        before = first.procs.get(pid)
        same = before is not None and before.start == info.start
        ticks += info.cpu_ticks - (before.cpu_ticks if same and before else 0)
    return ticks / CLOCK_TICKS / (last.t - first.t)


class TreeSampler:
    """A running process's tree sampled every SAMPLE_EVERY seconds by a thread, while
    in a `with` block; its sample times are `time.monotonic()` values."""

    def __init__(self, root: int) -> None:
        self._root = root
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.samples.append(Sample(time.monotonic(), snapshot(self._root), {}))
            if self._stop.wait(SAMPLE_EVERY):
                return

    def cpu_between(self, start: float, end: float) -> float | None:
        """The tree's CPU between two `time.monotonic()` values, in cores."""
        return tree_cpu(self.samples, start, end)


def interrupt_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so a bench cleans up the same way on
    Ctrl-C, a kill, or when started in the background (where SIGINT comes in ignored)."""
    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def read_proc(pid: int) -> ProcInfo | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        statm = Path(f"/proc/{pid}/statm").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    # fields[0] is field 3 (state): utime, stime, starttime are fields 14, 15, 22.
    return ProcInfo(
        ppid=int(fields[1]),
        start=int(fields[19]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        rss=int(statm.split()[1]) * PAGE_SIZE,
        zombie=fields[0] == b"Z",
    )


def cpu_busy() -> dict[int, int]:
    """Per CPU, the ticks spent running something (user, nice, system, irq) since boot."""
    busy: dict[int, int] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return busy
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            # user nice system idle iowait irq softirq steal ...
            ticks = [int(v) for v in values[:7]]
            busy[int(name[3:])] = sum(ticks[:3]) + ticks[5] + ticks[6]
    return busy


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found.extend(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text()
                         .split())
        except OSError:
            continue
    return found


def snapshot(root: int) -> dict[int, ProcInfo]:
    """The root and all its live descendants."""
    procs: dict[int, ProcInfo] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        info = read_proc(pid)
        if info is None or pid in procs:
            continue
        procs[pid] = info
        todo.extend(children(pid))
    return procs


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def _read_lines(stream: object, name: str, started: float, run: Run) -> None:
    for line in stream:  # type: ignore[attr-defined]
        run.lines.append((time.monotonic() - started, name, line))


def _signal_tree(run: Run, sig: signal.Signals, exclude_root: int | None = None) -> None:
    """Send `sig` to every process of the tree seen so far that is still the same process."""
    if not run.samples:
        return
    known: dict[int, ProcInfo] = {}
    for s in run.samples:
        known.update(s.procs)
    for pid, info in known.items():
        if pid == exclude_root:
            continue
        now = read_proc(pid)
        if now is not None and not now.zombie and now.start == info.start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def stop_run(process: subprocess.Popen[str], run: Run) -> None:
    """SIGINT the command's group, then SIGKILL whatever of its tree is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Descendants in their own sessions (agent, workers) exit when their parent is
    # gone; give them the same time, then make sure.
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        if not any(_same_alive(run, pid) for pid in run.pids() if pid != process.pid):
            return
        time.sleep(0.1)  # nothing to wait on for processes that are not our children
    _signal_tree(run, signal.SIGKILL, exclude_root=process.pid)


def _same_alive(run: Run, pid: int) -> bool:
    now = read_proc(pid)
    if now is None or now.zombie:
        return False
    for s in run.samples:
        if pid in s.procs:
            return s.procs[pid].start == now.start
    return False


def run_sampled(
    command: Sequence[str],
    *,
    timeout: float,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> Run:
    """Run `command` to its end (or `timeout` seconds), sampling its process tree."""
    run = Run(command=list(command))
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    started = run.started = time.monotonic()
    process = subprocess.Popen(
        list(command), cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    readers = [
        threading.Thread(target=_read_lines, args=(process.stdout, "stdout", started, run),
                         daemon=True),
        threading.Thread(target=_read_lines, args=(process.stderr, "stderr", started, run),
                         daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        deadline = started + timeout
        while process.poll() is None:
            now = time.monotonic()
            if now >= deadline:
                run.timed_out = True
                break
            procs = snapshot(process.pid)
            for pid in procs:
                if pid not in run.cmdlines:
                    run.cmdlines[pid] = cmdline(pid)
            run.samples.append(Sample(now - started, procs, cpu_busy()))
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(min(SAMPLE_EVERY, max(deadline - now, 0.01)))
    finally:
        stop_run(process, run)
        for reader in readers:
            reader.join(STOP_WAIT)
        run.elapsed = time.monotonic() - started
        run.returncode = process.returncode
    return run
