"""Driving `loadmaster run` from the benchmarks: its config, its command, its output.

The whole generator (master, embedded agent, worker) runs on CLIENT_CPU: the
master under `taskset`, the agent and its worker through `--cpu-list`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from _procs import Run, run_sampled
from _target import CLIENT_CPU, pinned

REPO = Path(__file__).resolve().parent.parent
START_MARGIN = 60.0  # start-up, stop grace and shutdown on top of run_time
_FIELD = re.compile(r"^(?P<label>[A-Za-z0-9.%/ ]+?)\s*:(?P<value>.*)$")
_LIVE_RPS = re.compile(r"^current rps \(last \d+ s\)\s*:\s*([\d.]+)", re.MULTILINE)
_ERROR = re.compile(r"^\s+(?P<count>\d+)\s+(?P<name>\S+)\s+(?P<type>\S+)\s+(?P<message>.*)$")


class LoadmasterFailed(RuntimeError):
    """`loadmaster run` exited with an error or printed no final block."""

    def __init__(self, message: str, run: Run) -> None:
        tail = "\n".join(run.output.splitlines()[-25:])
        command = " ".join(run.command)
        super().__init__(f"{message}\n  command: {command}\n  exit code: {run.returncode}\n"
                         f"  last output:\n{tail}")
        self.run = run


@dataclass
class FinalBlock:
    """The `final benchmark:` block of `loadmaster run`; the open model's lines, None in
    the closed model."""

    run_time: float
    success: int
    fail: int
    rps: float
    errors: dict[str, int] = field(default_factory=dict)  # by error type
    started_rate: float | None = None  # calls started/s: (success + fail) / run time
    scheduled: int | None = None
    late: int | None = None
    dropped: int | None = None

    @classmethod
    def parse(cls, stdout: str) -> FinalBlock | None:
        _, found, block = stdout.partition("final benchmark:")
        if not found:
            return None
        values: dict[str, str] = {}
        errors: dict[str, int] = {}
        in_errors = False
        for line in block.splitlines():
            if line.startswith("errors:"):
                in_errors = True
                continue
            if in_errors:
                m = _ERROR.match(line)
                if m and m["count"] != "count":
                    errors[m["type"]] = errors.get(m["type"], 0) + int(m["count"])
                    continue
                if not line.startswith(" "):
                    in_errors = False
            m = _FIELD.match(line)
            if m:
                values.setdefault(m["label"].strip(), m["value"].strip())
        try:
            final = cls(float(values["run time"]), int(values["success count"]),
                        int(values["fail count"]), float(values["rps"]), errors)
            if "calls started/s" in values:
                final.started_rate = float(values["calls started/s"])
                final.scheduled = _count(values["calls scheduled"])
                final.late = _count(values["late calls"])
                final.dropped = _count(values["dropped calls"])
        except (KeyError, ValueError):
            return None
        return final


def _count(value: str) -> int:
    """A count as the final block prints it: "1,234" or "1,234 (what it means)"."""
    return int(value.split()[0].replace(",", ""))


@dataclass
class ProjectRun:
    run: Run
    final: FinalBlock

    def load_window(self) -> tuple[float, float] | None:
        """From the first to the last live console block: the clients are all running."""
        first = self.run.first_line(r"^current rps\b[^:]*:")
        last = self.run.last_line(r"^current rps\b[^:]*:")
        if first is None or last is None or last - first < 1.0:
            return None
        return first, last

    def live_rps(self) -> float | None:
        """The last live block's current rps: successes/s over the run's last complete
        seconds (up to 5), so neither the ramp nor what the stop took."""
        rates = _LIVE_RPS.findall(self.run.stdout.partition("final benchmark:")[0])
        return float(rates[-1]) if rates else None

    def cpu(self) -> float | None:
        window = self.load_window()
        return None if window is None else self.run.cpu_between(*window)

    def worker_pids(self) -> set[int]:
        """The worker processes: the children of the agent's forkserver."""
        run = self.run
        return {pid for pid in run.pids()
                if "multiprocessing.forkserver" in run.cmdlines.get(run.parent_of(pid) or 0, "")}


def write_config(path: Path, **keys: Any) -> Path:
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


def loadmaster_command(conf: Path, workers: int = 1, cpus: str = str(CLIENT_CPU)) -> list[str]:
    """`loadmaster run` with `workers` workers, the whole generator on `cpus` (a CPU list
    as `taskset -c` takes it: 1, or 0,1)."""
    loadmaster = shutil.which("loadmaster")
    if loadmaster is None:
        raise RuntimeError("`loadmaster` is not on PATH: pip install -e . in the repository")
    return pinned([loadmaster, "run", "-f", str(conf), "--worker", str(workers),
                   "--cpu-list", cpus], cpus)


def run_loadmaster(conf: Path, run_time: float, workers: int = 1,
                   cpus: str = str(CLIENT_CPU)) -> ProjectRun:
    """Run one load test from the repository root (the configs' relative paths start there)."""
    command = loadmaster_command(conf, workers, cpus)
    run = run_sampled(command, timeout=run_time + START_MARGIN, cwd=REPO)
    if run.timed_out:
        raise LoadmasterFailed(f"no result within {run_time + START_MARGIN:g} s", run)
    final = FinalBlock.parse(run.stdout)
    if run.returncode != 0 or final is None:
        raise LoadmasterFailed("the run failed" if final else "no final block", run)
    return ProjectRun(run, final)
