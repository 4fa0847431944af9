"""The `scale` extra of compare.py (issue 22): one worker, then two, on this machine.

With the target on another machine, N workers on N cores give N times one worker's
rate. Here the target shares the generator's two cores, so the runs measure, for 1 and
for 2 workers: the requests/s (total and per worker), the generator's CPU (its whole
process tree, and each worker process), the target's CPU, and how busy the machine
was; requests/s per generator core is the figure that should not fall with 2 workers.
Each run says what limited it.

Target: nginx, `return 200 "ok"` (a reply from a buffer, the cheapest target at hand),
`SCALE_TARGET_WORKERS` worker processes, on loopback, no added delay: this VM's kernel
has no queueing disciplines (`tc qdisc add ... netem` answers "Specified qdisc kind is
unknown"), so a network namespace would add a veth hop and no latency, and its target
would share the same two cores. Its processes are moved (`sched_setaffinity`) to CPU 0
for the 1-worker run, a core of its own as in variant a, and to both CPUs for the
2-worker run, which it shares with the generator. Without nginx the extra is skipped:
the counting target (Python) would be the limit.

Generator: `loadmaster run`, the built-in client as in variant a, `SCALE_CLIENTS`
clients per worker (all running, no wait), `--worker N --cpu-list C` with the master
under `taskset -c C`: C is `1` for 1 worker, `0,1` for 2.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _figures import SATURATED, pct
from _loadmaster import FinalBlock, LoadmasterFailed, ProjectRun, run_loadmaster, write_config
from _procs import TreeSampler, snapshot
from _target import CLIENT_CPU, SERVER_CPU, Target, find_nginx, target_server

SCALE_CLIENTS = 200  # per worker: each worker runs the same load in both runs
SCALE_TARGET_WORKERS = 2
SCALE_CPUS = {1: str(CLIENT_CPU), 2: "0,1"}  # the generator's, by its workers
# the target's, by the generator's workers: a core of its own beside 1 worker (as in
# variant a), both cores shared with 2
TARGET_CPUS = {1: {SERVER_CPU}, 2: {0, 1}}
RAMP_FACTOR = 20  # clients started per second = users x 20, as in compare.py
FULL = 0.9  # the machine busy at this share of its cores or more: the cores were the limit
# cores busy with neither the generator nor the target above which a run is disturbed (in
# quiet runs, the kernel's loopback work charged to neither was 0.01-0.15)
REST_DISTURBED = 0.25
NGINX_CONNECTIONS = 20_000


@dataclass
class ScaleRun:
    workers: int
    cpus: str
    final: FinalBlock
    gen_cpu: float | None  # the generator's process tree, in cores
    worker_cpu: list[float] = field(default_factory=list)  # each worker process, in cores
    target_cpu: float | None = None  # the target's process tree, in cores
    busy: float | None = None  # the whole machine, in cores

    @property
    def rest(self) -> float | None:
        """Cores busy with neither the generator nor the target: the kernel, others."""
        if self.busy is None or self.gen_cpu is None or self.target_cpu is None:
            return None
        return max(0.0, self.busy - self.gen_cpu - self.target_cpu)

    @property
    def per_core(self) -> float | None:
        """requests/s per core of the generator (its whole tree)."""
        return self.final.rps / self.gen_cpu if self.gen_cpu else None

    def limit(self, cores: int) -> str:
        """What held the rate down, from the CPU figures."""
        if self.worker_cpu and min(self.worker_cpu) >= SATURATED:
            return "the generator: every worker at its core's limit"
        if self.busy is not None and self.busy >= FULL * cores:
            return (f"the machine's {cores} cores: generator {_cores(self.gen_cpu)} + target "
                    f"{_cores(self.target_cpu)} + the rest (kernel, others) "
                    f"{_cores(self.rest)}")
        target_cores = min(SCALE_TARGET_WORKERS, len(TARGET_CPUS[self.workers]))
        if self.target_cpu is not None and self.target_cpu >= SATURATED * target_cores:
            return "the target: at the limit of the cores it could use"
        return "no core at its limit: latency or the loopback"


def _cpu_list(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def scale_run(target: Target, tmp: Path, duration: int, workers: int) -> ScaleRun:
    users = SCALE_CLIENTS * workers
    conf = write_config(
        tmp / f"scale{workers}.yml", host=target.url("/test"), users=users,
        hatch_rate=users * RAMP_FACTOR, run_time=duration, worker=workers,
        benchmark_class_file="./examples/http_fast.py", wait_time=0, enable_dash=False,
        print_interval=1, method="POST", test_data_file="./data/data2.json")
    cpus = SCALE_CPUS[workers]
    for pid in snapshot(target.pid):
        os.sched_setaffinity(pid, TARGET_CPUS[workers])
    with TreeSampler(target.pid) as target_tree:
        done = run_loadmaster(conf, duration, workers, cpus)
    _check_workers(done, workers)
    result = ScaleRun(workers, cpus, done.final, done.cpu())
    window = done.load_window()
    if window is not None:
        result.worker_cpu = [c for pid in sorted(done.worker_pids())
                             if (c := done.run.cpu_between(*window, {pid})) is not None]
        result.busy = done.run.busy_between(*window)
        base = done.run.started  # the run's sample times count from it
        result.target_cpu = target_tree.cpu_between(base + window[0], base + window[1])
    return result


def _check_workers(done: ProjectRun, workers: int) -> None:
    found = done.worker_pids()
    if len(found) != workers:
        raise LoadmasterFailed(f"expected {workers} worker processes, found {len(found)}",
                               done.run)


def scale_runs(tmp: Path, duration: int) -> list[ScaleRun]:
    """1 worker, then 2, against one nginx started for them."""
    with target_server(connections=NGINX_CONNECTIONS, workers=SCALE_TARGET_WORKERS,
                       cpu=None) as target:
        runs = []
        for workers in SCALE_CPUS:
            print(f"running scale, {workers} worker(s) ...", file=sys.stderr, flush=True)
            runs.append(scale_run(target, tmp, duration, workers))
        return runs


def scale_lines(tmp: Path, duration: int, use_nginx: bool) -> list[str]:
    cores = os.cpu_count() or 1
    if cores < 2:
        return ["scale: skipped: needs 2 CPUs"]
    if not use_nginx or find_nginx() is None:
        return ["scale: skipped: needs nginx (apt-get install nginx; not with --no-nginx): "
                "the counting target, in Python, would be the limit"]
    try:
        runs = scale_runs(tmp, duration)
    except LoadmasterFailed as e:
        print(f"scale: {e}", file=sys.stderr)
        return ["scale: loadmaster failed (details on stderr)"]
    lines = [
        f"scale (issue 22): built-in client as in a, {SCALE_CLIENTS} clients per worker, "
        f"{duration} s per run; target nginx, {SCALE_TARGET_WORKERS} workers, "
        'return 200 "ok", loopback, no added delay (see bench/README.md)',
        f"  {'workers':>7} {'CPUs':<5} {'target on':<9} {'requests/s':>11} {'per worker':>11} "
        f"{'gen CPU':>8} {'per worker CPU':>15} {'rps/gen core':>13} {'target CPU':>11} "
        f"{'machine busy':>13}  limit",
    ]
    for r in runs:
        each = ", ".join(pct(c) for c in r.worker_cpu) or "-"
        per_core = "-" if r.per_core is None else f"{r.per_core:,.0f}"
        busy = "-" if r.busy is None else f"{pct(r.busy)} of {cores * 100}%"
        lines.append(
            f"  {r.workers:>7} {r.cpus:<5} {_cpu_list(TARGET_CPUS[r.workers]):<9} "
            f"{r.final.rps:>11,.0f} {r.final.rps / r.workers:>11,.0f} {pct(r.gen_cpu):>8} "
            f"{each:>15} {per_core:>13} {pct(r.target_cpu):>11} {busy:>13}  {r.limit(cores)}")
        if r.final.fail:
            lines.append(f"  {'':>7} {r.final.fail:,} failed calls: {r.final.errors}")
    rest = max((r.rest for r in runs if r.rest is not None), default=0.0)
    if rest > REST_DISTURBED:
        lines.append(f"  WARNING: up to {rest:.2f} cores busy with neither the generator nor "
                     "the target during a run: other processes; these figures are disturbed")
    one, two = runs[0], runs[-1]
    if len(runs) == 2 and one.final.rps:
        per_core = (f"{two.per_core / one.per_core:.2f}x" if one.per_core and two.per_core
                    else "-")
        lines.append(f"  2 workers / 1 worker: requests/s {two.final.rps / one.final.rps:.2f}x, "
                     f"requests/s per generator core {per_core}")
    lines += [
        "  gen CPU: the generator's process tree (master, agent, workers), in % of one core; "
        "per worker CPU: each worker process; target CPU: nginx's processes; machine busy: "
        "every CPU's non-idle time, summed",
        "  the target shares the generator's cores here: requests/s per generator core, not "
        "requests/s, is what 2 workers on 2 free cores would double",
    ]
    return lines

