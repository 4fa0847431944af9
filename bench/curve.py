"""What CURVE costs: the built-in client's requests/s and the master's CPU per delta.

Issue 17 ("Cost"): with and without CURVE, in one run. Rounds are interleaved (plain
then CURVE, then CURVE then plain, ...) so that this host's drift falls on both sides
alike; only ratios within one run count.

load: `loadmaster run` with examples/http_fast.py (POST /test with data/data2.json,
--users clients, keep-alive, no wait) for --duration seconds, 1 worker; master,
embedded agent and worker pinned to CPU 1, the target to CPU 0 (nginx, else
bench/_counting_target.py), as `compare.py` variant a. With CURVE the same command
with `--key M --authorized-agents A`, the pairs made by `loadmaster keygen` and
`loadagent keygen` in a temporary folder; with its embedded agent the master makes its
agent's pair, so the control and stats channels are CURVE (the master's "CURVE: ..."
log line is checked). Per round: the final block's rps, the generator tree's CPU from
the first to the last live block, rps per generator core (rps / CPU), and the other
load on CPU 1. Below 90% generator CPU the target was the limit: then rps per core is
the figure that compares the generators.

aggregation: `bench/aggregation.py --workers N --seconds S`, and the same with
`--curve` (the master's SUB a CURVE server behind loadmaster.auth.AgentAuth, the
publishers CURVE clients), for each N of --workers: the master's CPU in % of one core
and per delta received, and the other load on the machine (both cores busy with
anything but the bench's processes, in % of one core, over its measured seconds).
A row marked "!" had more than 5% of a core of other load.

Printed: each round, then the medians and CURVE / plain (of the medians, and the range
of the round-by-round ratios).

    python bench/curve.py [--rounds 4] [--duration 8] [--users 50]
        [--workers 2000,10000] [--agg-rounds 3] [--agg-seconds 12]
        [--only load,agg] [--no-nginx]
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _figures import DISTURBED, SATURATED
from _loadmaster import (
    REPO,
    START_MARGIN,
    FinalBlock,
    LoadmasterFailed,
    ProjectRun,
    loadmaster_command,
    write_config,
)
from _procs import CLOCK_TICKS, Run, interrupt_on_signals, run_sampled
from _target import CLIENT_CPU, SERVER_CPU, Target, target_server
from compare import DATA_FILE, PATH, RAMP_FACTOR, machine

AGGREGATION = Path(__file__).resolve().parent / "aggregation.py"
AGG_MARGIN = 60.0  # start-up and the publishers' join on top of --agg-seconds
AGG_SKIP = 5.0  # aggregation.py's start-up, its publishers' 3 s and its skipped second
CURVE_LOG = "CURVE: control and stats channels accept"
SIDES = ("plain", "CURVE")


@dataclass
class LoadRound:
    rps: float
    cpu: float | None  # the generator tree, of one core
    other: float | None  # CPU 1 busy with other processes
    success: int
    fail: int

    @property
    def per_core(self) -> float | None:
        return self.rps / self.cpu if self.cpu else None


@dataclass
class AggRound:
    share: float  # the master's CPU, of one core
    rate: float  # deltas received per second
    lost: int
    other: float | None  # the machine busy with other processes, of one core

    @property
    def us_per_delta(self) -> float:
        return 1e6 * self.share / self.rate if self.rate else float("nan")


def side_order(round_no: int) -> tuple[bool, ...]:
    """Plain first in even rounds, CURVE first in odd ones."""
    return (False, True) if round_no % 2 == 0 else (True, False)


def make_keys(tmp: Path) -> list[str]:
    """A master pair and an agent pair through the CLIs; the `run` options that use them."""
    master, agents = tmp / "master", tmp / "agents"
    for command in (["loadmaster", "keygen", str(master)],
                    ["loadagent", "keygen", str(agents)]):
        path = shutil.which(command[0])
        if path is None:
            raise RuntimeError(f"`{command[0]}` is not on PATH: pip install -e . in the "
                               f"repository")
        subprocess.run([path, *command[1:]], check=True, stdout=subprocess.DEVNULL)
    return ["--key", str(master), "--authorized-agents", str(agents)]


def load_round(conf: Path, duration: float, curve_args: list[str] | None) -> LoadRound:
    """One `loadmaster run` (as `_loadmaster.run_loadmaster`, with more options)."""
    command = [*loadmaster_command(conf), "--log-level", "info", *(curve_args or [])]
    run = run_sampled(command, timeout=duration + START_MARGIN, cwd=REPO)
    if run.timed_out:
        raise LoadmasterFailed(f"no result within {duration + START_MARGIN:g} s", run)
    final = FinalBlock.parse(run.stdout)
    if run.returncode != 0 or final is None:
        raise LoadmasterFailed("the run failed" if final else "no final block", run)
    if (CURVE_LOG in run.output) != bool(curve_args):
        raise LoadmasterFailed(f"CURVE {'off' if curve_args else 'on'} where it should not "
                               f"be (the master's log line)", run)
    done = ProjectRun(run, final)
    window = done.load_window()
    other = run.other_load(CLIENT_CPU, *window) if window else None
    return LoadRound(final.rps, done.cpu(), other, final.success, final.fail)


_RECEIVED = re.compile(r"^deltas received\s*:\s*(\d+)/s", re.M)
_LOST = re.compile(r"^deltas lost \(seq gaps\)\s*:\s*(\d+)", re.M)
_CPU = re.compile(r"^master CPU \(aggregation\)\s*:\s*([\d.]+)% of one core", re.M)
_ADMITTED = re.compile(r"^CURVE\s*:.* (\d+) of (\d+) publisher", re.M)


def agg_round(workers: int, seconds: float, curve: bool) -> AggRound:
    """One `bench/aggregation.py` run, its figures read from what it printed."""
    command = [sys.executable, str(AGGREGATION), "--workers", str(workers),
               "--seconds", f"{seconds:g}", *(["--curve"] if curve else [])]
    run = run_sampled(command, timeout=seconds + AGG_MARGIN, cwd=REPO)
    out = run.stdout
    found = [_RECEIVED.search(out), _LOST.search(out), _CPU.search(out)]
    admitted = _ADMITTED.search(out)
    if run.timed_out or run.returncode != 0 or None in found or curve != bool(admitted):
        tail = "\n".join(run.output.splitlines()[-25:])
        raise RuntimeError(f"{' '.join(command)}: exit code {run.returncode}"
                           f"{' (timed out)' if run.timed_out else ''}\n{tail}")
    if admitted and admitted[1] != admitted[2]:
        raise RuntimeError(f"{' '.join(command)}: only {admitted[1]} of {admitted[2]} "
                           f"publishers admitted")
    received, lost, cpu = (m[1] for m in found if m is not None)
    other = machine_other_load(run, AGG_SKIP, AGG_SKIP + seconds - 2.0)
    return AggRound(float(cpu) / 100, float(received), int(lost), other)


def machine_other_load(run: Run, start: float, end: float) -> float | None:
    """Every CPU busy with anything but the run's tree, over a window, of one core."""
    first = next((s for s in run.samples if s.t >= start), None)
    last = next((s for s in reversed(run.samples) if s.t <= end), None)
    tree = run.cpu_between(start, end)
    if first is None or last is None or tree is None:
        return None
    busy = sum(last.cpu_busy.values()) - sum(first.cpu_busy.values())
    return max(0.0, busy / CLOCK_TICKS / (last.t - first.t) - tree)


def _mark(other: float | None) -> str:
    return "!" if other is not None and other > DISTURBED else " "


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _ratios(plain: list[float | None], curve: list[float | None]) -> str:
    """CURVE / plain round by round: their range."""
    ratios = [c / p for p, c in zip(plain, curve, strict=True) if p and c is not None]
    return f"{min(ratios):.3f}-{max(ratios):.3f}" if ratios else "-"


def _ratio(plain: float | None, curve: float | None) -> str:
    return f"{curve / plain:.3f}" if plain and curve is not None else "-"


def run_load(args: argparse.Namespace, tmp: Path, target: Target,
             curve_args: list[str]) -> None:
    conf = write_config(
        tmp / "http_fast.yml", host=target.url(PATH), users=args.users,
        hatch_rate=args.users * RAMP_FACTOR, run_time=args.duration, worker=1,
        benchmark_class_file="./examples/http_fast.py", wait_time=0, enable_dash=False,
        print_interval=1, method="POST", test_data_file=DATA_FILE)
    print(f"load: loadmaster run, examples/http_fast.py, POST {PATH} with {DATA_FILE}, "
          f"{args.users} clients, no wait, {args.duration} s a round, 1 worker; generator "
          f"on CPU {CLIENT_CPU}, target on CPU {SERVER_CPU} ({target.description})")
    print(f"  {'round':>5} {'side':<6} {'requests/s':>11} {'gen CPU':>8} {'rps/core':>10} "
          f"{'other load':>10} {'fail':>5}")
    rounds: dict[bool, list[LoadRound]] = {False: [], True: []}
    for n in range(args.rounds):
        for curve in side_order(n):
            r = load_round(conf, args.duration, curve_args if curve else None)
            rounds[curve].append(r)
            per_core = "-" if r.per_core is None else f"{r.per_core:,.0f}"
            mark = "*" if r.cpu is not None and r.cpu < SATURATED else " "
            print(f"  {n + 1:>5} {SIDES[curve]:<6} {r.rps:>11,.0f} {_pct(r.cpu):>7}{mark} "
                  f"{per_core:>10} {_pct(r.other):>10}{_mark(r.other)} {r.fail:>5}",
                  flush=True)
    plain, secured = rounds[False], rounds[True]
    rps = [_median([r.rps for r in side]) for side in (plain, secured)]
    core = [_median([r.per_core for r in side]) for side in (plain, secured)]
    cpu = [_median([r.cpu for r in side]) for side in (plain, secured)]
    print("  * generator under 90% of its core: the target was the limit; compare rps/core")
    print("  ! more than 5% of the generator's core taken by other processes")
    for label, values in (("requests/s", rps), ("requests/s per generator core", core)):
        shown = ["-" if v is None else f"{v:,.0f}" for v in values]
        print(f"  median {label}: plain {shown[0]}, CURVE {shown[1]}")
    print(f"  median generator CPU: plain {_pct(cpu[0])}, CURVE {_pct(cpu[1])}")
    print(f"  CURVE / plain, requests/s: {_ratio(*rps)} (rounds: "
          f"{_ratios([r.rps for r in plain], [r.rps for r in secured])})")
    print(f"  CURVE / plain, requests/s per generator core: {_ratio(*core)} (rounds: "
          f"{_ratios([r.per_core for r in plain], [r.per_core for r in secured])}); "
          f"issue 17 allows a drop of 5% at most")


def run_agg(args: argparse.Namespace) -> None:
    print(f"aggregation: bench/aggregation.py --seconds {args.agg_seconds:g} [--curve], "
          f"the master's CPU (its process, ZeroMQ's I/O thread included)")
    print(f"  {'round':>5} {'workers':>8} {'side':<6} {'master CPU':>10} {'us/delta':>9} "
          f"{'deltas/s':>9} {'lost':>5} {'other load':>10}")
    rounds: dict[tuple[int, bool], list[AggRound]] = {}
    for n in range(args.agg_rounds):
        for workers in args.workers:
            for curve in side_order(n):
                r = agg_round(workers, args.agg_seconds, curve)
                rounds.setdefault((workers, curve), []).append(r)
                other = "-" if r.other is None else f"{100 * r.other:.0f}%"
                print(f"  {n + 1:>5} {workers:>8,} {SIDES[curve]:<6} {100 * r.share:>9.1f}% "
                      f"{r.us_per_delta:>9.1f} {r.rate:>9,.0f} {r.lost:>5} {other:>10}"
                      f"{_mark(r.other)}", flush=True)
    for workers in args.workers:
        plain, secured = rounds[(workers, False)], rounds[(workers, True)]
        share = [_median([r.share for r in side]) for side in (plain, secured)]
        us = [_median([r.us_per_delta for r in side]) for side in (plain, secured)]
        lost = [sum(r.lost for r in side) for side in (plain, secured)]
        print(f"  {workers:,} workers, medians: master CPU plain {100 * (share[0] or 0):.1f}%, "
              f"CURVE {100 * (share[1] or 0):.1f}%; per delta plain {us[0]:.1f} us, CURVE "
              f"{us[1]:.1f} us; CURVE / plain {_ratio(*us)} (rounds: "
              f"{_ratios([r.us_per_delta for r in plain], [r.us_per_delta for r in secured])})"
              f"; deltas lost: plain {lost[0]}, CURVE {lost[1]}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="load rounds per side")
    parser.add_argument("--duration", type=int, default=8, help="seconds per load round")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--workers", default="2000,10000",
                        help="simulated workers of the aggregation rounds, comma-separated")
    parser.add_argument("--agg-rounds", type=int, default=3,
                        help="aggregation rounds per side and worker count")
    parser.add_argument("--agg-seconds", type=float, default=12.0)
    parser.add_argument("--only", default="load,agg", help="load, agg or both")
    parser.add_argument("--no-nginx", action="store_true",
                        help="the counting target even when nginx is installed")
    args = parser.parse_args()
    args.parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if not args.parts or args.parts - {"load", "agg"}:
        parser.error("--only: load, agg or both")
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--workers: numbers, comma-separated")
    if (args.rounds < 1 or args.agg_rounds < 1 or args.duration < 2 or args.users < 1
            or args.agg_seconds < 4 or not args.workers or min(args.workers) < 1):
        parser.error("--rounds and --agg-rounds at least 1, --duration at least 2, "
                     "--agg-seconds at least 4, --users and --workers at least 1")
    return args


def main() -> None:
    args = parse_args()

    interrupt_on_signals()
    tmp = Path(tempfile.mkdtemp(prefix="bench-curve-"))
    try:
        print(f"date:      {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
        print(f"machine:   {machine()}")
        print("rounds:    interleaved, plain and CURVE alternating first; only ratios within "
              "this run count", flush=True)
        if "load" in args.parts:
            curve_args = make_keys(tmp)
            print()
            with target_server(not args.no_nginx) as target:
                run_load(args, tmp, target, curve_args)
        if "agg" in args.parts:
            print()
            run_agg(args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
