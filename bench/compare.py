"""Requests/s per generator core: this project against aiohttp, Locust, wrk and a ceiling.

Workload: every variant sends the seed's request, POST /test with the body of
data/data2.json (443 bytes, Content-Type: text/plain), from --users clients
(default 50), each on its own keep-alive connection, with no wait between
calls, for --duration seconds (default 10).

Target: nginx when installed (1 worker, access_log off, `return 200 "ok"` for
any method, config and files in a temporary directory), else
bench/_counting_target.py; pinned to CPU 0. Every generator is pinned to CPU 1,
all its processes included (for this project: master, agent and worker).

Variants (letters for --only):
  a  loadmaster run, examples/http_fast.py (protocol.http.HttpClient), 1 worker
  b  loadmaster run, examples/http_post.py (the seed's aiohttp client), 1 worker
  c  a bare aiohttp loop on uvloop (bench/_aiohttp_loop.py), one session per task
  d  Locust FastHttpUser, headless, one process (if locust is installed)
  e  wrk -t1 -c USERS with a Lua script for the POST (if wrk is installed)
  f  the ceiling (bench/_ceiling.py): the same request bytes as a, from USERS bare
     uvloop asyncio.Protocol connections, one request in flight each, the response's
     end found from its Content-Length, a response counter and nothing else
  g  the API's bound (bench/_api_bound.py): the least any client written against this
     project's API pays: a task per client, `await user.execute()` awaiting an
     `async def request()`, a future per request, httptools with the three callbacks
     that give status, body and end, a response object, each call timed and recorded
     as the worker's call loop does; nothing else (no scheduler, no counting of
     statuses or bytes, no timeout, no check). f / g is what the API itself costs;
     a / g what our code costs on top of it
  h  a fixed-request mode's bound (bench/_fixed_bound.py): what variant a's call costs
     when the worker drives the connection from its callbacks, as wrk does: HttpClient's
     own connection and parse, the status and bytes counted and the call timed and
     recorded as for a, the next request written as the response ends; no task,
     coroutine, future or response object a call, and nothing else (no scheduler)
  i  loadmaster run, examples/http_fixed.py (protocol.http.FixedRequest: the request
     declared, the calls driven by the worker from the connection's callbacks), 1 worker
and (names for --only):
  noop    the rate of a no-op execute() in one worker (10 clients, wait_time 0), and in
          the same run the bare loop it is held against (bench/_noop_loop.py): 10 tasks
          awaiting a no-op coroutine, each call timed and recorded with
          protocol.histogram.Histogram.record, no load tester; and, as a diagnosis, the
          same loop recording as the worker's call loop does (inlined)
  exact   variants a, b and i (those of them chosen too; else a and i) against the
          counting target: success count == served?
  memory  one worker's RSS with 10 and with 10,000 idle connected clients
  open    the open model's cost (issue 19), with the built-in client as in a, in rounds
          of three runs: (i) the closed model, USERS clients, no wait: its rate R;
          (ii) arrival_rate 3 x R on a pool of USERS clients (max_users =
          pre_allocated_users = USERS): successes/s against R (floor 0.90); (iii)
          arrival_rate 0.8 x R, the same pool: calls started/s against 0.8 x R (within
          1%), late and dropped calls. Rounds interleaved (--rounds), (ii) and (iii) in
          turn first; PASS/FAIL on the medians of the rounds whose (i) had the
          generator at 90% of its core or more.
  scale   (bench/_scale.py) the built-in client as in a with 1 worker, then 2, 200
          clients per worker, against nginx with 2 workers, which has CPU 0 beside 1
          worker and shares both CPUs with 2: requests/s in all and per worker, the
          generator's CPU (tree and each worker), the target's, the machine's, what
          limited each run, and the 2-worker / 1-worker ratios (requests/s, and per
          generator core)

After the table and the extras, issue 22's floors with PASS or FAIL on this run's
figures (bench/_floors.py): a / f at least 0.85, a / e at least 0.65, no-op / bare loop
at least 0.90, at most 5 KiB per idle connected client, exactness EXACT; NOT MEASURED
where the run did not include what a floor needs.

Requests/s is each tool's own figure (for loadmaster: the final block's rps,
success count / run time). The generator's CPU is the utime + stime of its
whole process tree, read from /proc every 0.2 s, over the window where all
its clients run, divided by that window's wall time. A ratio between two
generators only measures the generators while both are near 100% of their
core; below that, the target or the loopback was the limit.

    python bench/compare.py [--duration 10] [--users 50]
        [--only a,b,c,d,e,f,g,noop,exact,memory,open,scale] [--skip-memory] [--no-nginx]
        [--rounds 1]

It installs nothing: a missing tool's rows say what to install.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _figures import DISTURBED, SATURATED, pct
from _floors import NOOP_FLOOR, Floors, Measured
from _loadmaster import (
    REPO,
    LoadmasterFailed,
    ProjectRun,
    run_loadmaster,
    write_config,
)
from _open_report import OPEN_HELD, OPEN_OVER, OpenRound, OpenRun, open_lines
from _procs import Run, interrupt_on_signals, run_sampled
from _scale import scale_lines
from _target import CLIENT_CPU, SERVER_CPU, Target, pinned, raise_fd_limit, target_server

LETTERS = ("a", "b", "c", "d", "e", "f", "g", "h", "i")
EXTRAS = ("noop", "exact", "memory", "open", "scale")
DATA_FILE = "./data/data2.json"  # relative to the repository root, as in the seed's config
PATH = "/test"
NOOP_USERS = 10
IDLE_FEW, IDLE_MANY = 10, 10_000
IDLE_HATCH_RATE = 5000
IDLE_RUN_TIME = 15
EXACT_MAX_DURATION = 5
RAMP_FACTOR = 20  # clients started per second = users x 20: all running within 50 ms
NGINX_CONNECTIONS = 20_000
TOOL_MARGIN = 30.0  # on top of --duration before a tool's run is cut

NOOP_CLIENT = '''\
from protocol import ClientProtocol


class Noop(ClientProtocol):
    async def execute(self) -> None:
        return None
'''

IDLE_CLIENT = '''\
import asyncio

from protocol import ClientProtocol
from protocol.http import HttpClient


class Idle(ClientProtocol):
    """Connects with one request, then holds its connection open without traffic."""

    async def init_before_use(self, host: str) -> None:
        self._client = HttpClient(host)
        (await self._client.get()).raise_for_status()

    async def execute(self) -> None:
        await asyncio.sleep(3600)

    async def shutdown(self) -> None:
        await self._client.close()
'''

LOCUSTFILE = '''\
from locust import FastHttpUser, constant, task

with open({data!r}, "rb") as f:
    BODY = f.read()


class Post(FastHttpUser):
    wait_time = constant(0)

    @task
    def post(self) -> None:
        self.client.post({path!r}, data=BODY, headers={{"Content-Type": "text/plain"}})
'''

WRK_SCRIPT = '''\
local f = assert(io.open({data}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "text/plain"
'''


@dataclass
class Result:
    key: str
    label: str
    rps: float | None = None
    cpu: float | None = None
    requests: int | None = None
    errors: int = 0
    note: str = ""  # why there is no figure, or what to know about it
    other: float | None = None  # load on the generator's CPU from other processes


def usage(run: Run, start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """The generator's CPU and its core's load from other processes, over a window."""
    if start is None or end is None:
        return None, None
    return run.cpu_between(start, end), run.other_load(CLIENT_CPU, start, end)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, target: Target) -> None:
        self.users: int = args.users
        self.duration: int = args.duration
        self.tmp = tmp
        self.target = target
        self.url = target.url(PATH)
        self.data = REPO / DATA_FILE

    # -- this project -----------------------------------------------------------------
    def _conf(self, name: str, client: str, **extra: object) -> Path:
        keys: dict[str, object] = {
            "host": self.url, "users": self.users, "hatch_rate": self.users * RAMP_FACTOR,
            "run_time": self.duration, "worker": 1, "benchmark_class_file": client,
            "wait_time": 0, "enable_dash": False, "print_interval": 1,
        }
        keys.update(extra)
        return write_config(self.tmp / f"{name}.yml", **keys)

    def project(self, key: str, label: str, conf: Path) -> Result:
        done = run_loadmaster(conf, self.duration)
        cpu, other = usage(done.run, *(done.load_window() or (None, None)))
        return Result(key, label, done.final.rps, cpu, done.final.success, done.final.fail,
                      other=other)

    def builtin_client(self) -> Result:
        conf = self._conf("a", "./examples/http_fast.py", method="POST",
                          test_data_file=DATA_FILE)
        return self.project("a", "loadmaster + HttpClient (http_fast.py)", conf)

    def fixed_client(self) -> Result:
        conf = self._conf("i", "./examples/http_fixed.py", method="POST",
                          test_data_file=DATA_FILE)
        return self.project("i", "loadmaster + FixedRequest (http_fixed.py)", conf)

    def seed_client(self) -> Result:
        conf = self._conf("b", "./examples/http_post.py", test_data_file=DATA_FILE)
        return self.project("b", "loadmaster + seed aiohttp (http_post.py)", conf)

    # -- the others -------------------------------------------------------------------
    def bare_aiohttp(self) -> Result:
        return self._request_loop("c", "bare aiohttp loop, uvloop", "_aiohttp_loop.py")

    def ceiling(self) -> Result:
        return self._request_loop("f", "ceiling: bare uvloop protocol (_ceiling.py)",
                                  "_ceiling.py")

    def api_bound(self) -> Result:
        return self._request_loop("g", "the API's bound (_api_bound.py)", "_api_bound.py")

    def fixed_bound(self) -> Result:
        return self._request_loop("h", "a fixed-request mode's bound (_fixed_bound.py)",
                                  "_fixed_bound.py")

    def _request_loop(self, key: str, label: str, script: str) -> Result:
        """A script of ours taking URL USERS DURATION DATA_FILE (see _aiohttp_loop.py)."""
        run, counts, cpu, other = self._script(script, self.url, str(self.users),
                                               str(self.duration), str(self.data))
        if counts is None:
            return Result(key, label, note=_failure(run))
        return Result(key, label, counts["responses"] / counts["elapsed"], cpu,
                      counts["responses"], counts["errors"], other=other)

    def _script(self, script: str, *args: str) -> tuple[Run, dict[str, Any] | None,
                                                         float | None, float | None]:
        """Run bench/SCRIPT on CLIENT_CPU: it prints `started`, then one JSON line. Its
        JSON (None if it failed), its CPU and its core's other load from 0.5 s after the
        start to the end of the duration."""
        path = Path(__file__).resolve().parent / script
        run = self._tool([sys.executable, str(path), *args])
        out = [line for line in run.stdout.splitlines() if line.startswith("{")]
        started = run.first_line(r"^started$")
        if run.returncode != 0 or not out or started is None:
            return run, None, None, None
        cpu, other = usage(run, started + 0.5, started + self.duration)
        return run, json.loads(out[-1]), cpu, other

    def locust(self) -> Result:
        label = "Locust FastHttpUser"
        if importlib.util.find_spec("locust") is None:
            return Result("d", label, note="not installed (pip install locust)")
        locustfile = self.tmp / "locustfile.py"
        locustfile.write_text(LOCUSTFILE.format(data=str(self.data), path=PATH))
        run = self._tool([
            sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
            "-u", str(self.users), "-r", str(self.users * RAMP_FACTOR),
            "-t", f"{self.duration}s", "--host", self.target.url("").rstrip("/"),
            "--only-summary", "--loglevel", "INFO",
        ])
        # Locust logs its summary on stderr; the first table's Aggregated row holds
        # requests, failures and requests/s.
        m = re.search(r"^\s*Aggregated\s+(\d+)\s+(\d+)\(.*?\)\s+\|.*\|\s+([\d.]+)\s+[\d.]+\s*$",
                      run.output, re.MULTILINE)
        if m is None:
            return Result("d", label, note=_failure(run))
        start = run.first_line(r"All users spawned")
        end = run.first_line(r"run-time limit reached")
        cpu, other = usage(run, None if start is None else start + 0.5, end)
        return Result("d", label, float(m[3]), cpu, int(m[1]), int(m[2]), other=other)

    def wrk(self) -> Result:
        label = f"wrk -t1 -c{self.users}"
        wrk = shutil.which("wrk")
        if wrk is None:
            return Result("e", label, note="not installed (apt-get install wrk)")
        script = self.tmp / "post.lua"
        script.write_text(WRK_SCRIPT.format(data=json.dumps(str(self.data))))
        run = self._tool([wrk, "-t1", f"-c{self.users}", f"-d{self.duration}s",
                          "-s", str(script), self.url])
        rate = re.search(r"^Requests/sec:\s+([\d.]+)", run.stdout, re.MULTILINE)
        total = re.search(r"^\s*(\d+) requests in", run.stdout, re.MULTILINE)
        if run.returncode != 0 or rate is None or total is None:
            return Result("e", label, note=_failure(run))
        errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)",
                                                run.stdout))
        socket_errors = re.search(r"Socket errors:.*", run.stdout)
        cpu, other = usage(run, 0.5, self.duration)
        return Result("e", label, float(rate[1]), cpu, int(total[1]), errors,
                      socket_errors[0] if socket_errors else "", other)

    def _tool(self, command: list[str]) -> Run:
        return run_sampled(pinned(command, CLIENT_CPU), timeout=self.duration + TOOL_MARGIN,
                           cwd=REPO)

    # -- the extras -------------------------------------------------------------------
    def noop(self) -> ProjectRun:
        client = self.tmp / "noop_client.py"
        client.write_text(NOOP_CLIENT)
        conf = self._conf("noop", str(client), users=NOOP_USERS,
                          hatch_rate=NOOP_USERS * RAMP_FACTOR)
        return run_loadmaster(conf, self.duration)

    def noop_loop(self, inline: bool = False) -> Result:
        """The no-op baseline (_noop_loop.py): NOOP_USERS tasks, no load tester."""
        label = "bare loop, worker's recording inlined" if inline else "bare loop"
        flags = ["--inline"] if inline else []
        run, counts, cpu, other = self._script("_noop_loop.py", str(NOOP_USERS),
                                               str(self.duration), *flags)
        if counts is None:
            return Result("noop", label, note=_failure(run))
        return Result("noop", label, counts["calls"] / counts["elapsed"], cpu, counts["calls"],
                      other=other)

    def open_run(self, step: str, rate: float | None) -> OpenRun:
        """(i) with ``rate`` None: variant a's closed model; else the open model at
        ``rate`` calls/s on a pool of --users clients, all made at the start."""
        client, request = "./examples/http_fast.py", {"method": "POST",
                                                       "test_data_file": DATA_FILE}
        if rate is None:
            conf = self._conf(f"open-{step}", client, **request)
        else:  # the closed model's keys (users, hatch_rate, wait_time) are refused here
            conf = write_config(
                self.tmp / f"open-{step}.yml", host=self.url, arrival_rate=rate,
                max_users=self.users, pre_allocated_users=self.users,
                run_time=self.duration, worker=1, benchmark_class_file=client,
                enable_dash=False, print_interval=1, **request)
        done = run_loadmaster(conf, self.duration)
        if rate is not None and done.final.started_rate is None:
            raise LoadmasterFailed("no open-model lines in the final block", done.run)
        cpu, other = usage(done.run, *(done.load_window() or (None, None)))
        return OpenRun(step, rate, done.final, done.live_rps(), cpu, other)

    def idle(self, users: int) -> ProjectRun:
        client = self.tmp / "idle_client.py"
        client.write_text(IDLE_CLIENT)
        conf = self._conf(f"idle{users}", str(client), users=users,
                          hatch_rate=IDLE_HATCH_RATE, run_time=IDLE_RUN_TIME, stop_grace=1)
        return run_loadmaster(conf, IDLE_RUN_TIME)


def _failure(run: Run) -> str:
    tail = " | ".join(run.output.strip().splitlines()[-3:])
    why = "timed out" if run.timed_out else f"exit code {run.returncode}"
    return f"failed ({why}): {tail[:300]}"


def _run_variant(bench: Bench, key: str) -> Result:
    runs: dict[str, Callable[[], Result]] = {
        "a": bench.builtin_client, "b": bench.seed_client, "c": bench.bare_aiohttp,
        "d": bench.locust, "e": bench.wrk, "f": bench.ceiling, "g": bench.api_bound,
        "h": bench.fixed_bound, "i": bench.fixed_client,
    }
    print(f"running {key} ...", file=sys.stderr, flush=True)
    try:
        return runs[key]()
    except LoadmasterFailed as e:
        print(f"variant {key}: {e}", file=sys.stderr)
        return Result(key, f"variant {key}", note="loadmaster failed (details above, on stderr)")


# -- the report ---------------------------------------------------------------------------
def _ratio(value: float | None, base: Result | None) -> str:
    if value is None or base is None or not base.rps:
        return "-"
    return f"{value / base.rps:.2f}x"


def print_table(results: list[Result]) -> None:
    by_key = {r.key: r for r in results}
    locust, wrk, ceiling = by_key.get("d"), by_key.get("e"), by_key.get("f")
    print(f"{'':3}{'variant':<42} {'requests/s':>11} {'gen CPU':>8} {'vs Locust':>10} "
          f"{'vs wrk':>8} {'vs ceiling':>10}  {'requests':>10} {'errors':>7} "
          f"{'other load':>10}")
    for r in results:
        name = f"{r.key}  {r.label}"
        if r.rps is None:
            print(f"{name:<45} {r.note}")
            continue
        flag = "" if r.cpu is None or r.cpu >= SATURATED else " *"
        print(f"{name:<45} {r.rps:>11,.0f} {pct(r.cpu) + flag:>8} {_ratio(r.rps, locust):>10} "
              f"{_ratio(r.rps, wrk):>8} {_ratio(r.rps, ceiling):>10}  {r.requests or 0:>10,} "
              f"{r.errors:>7,} {pct(r.other):>10}" + (f"  {r.note}" if r.note else ""))
    if any(r.cpu is not None and r.cpu < SATURATED for r in results if r.rps is not None):
        print(f"   * generator under {SATURATED:.0%} of its core: something else (the target, "
              "the loopback, other load) was the limit; its figure understates the generator")
    disturbed = max((r.other for r in results if r.other is not None), default=0.0)
    if disturbed > DISTURBED:
        print(f"   WARNING: other processes used up to {disturbed:.0%} of CPU {CLIENT_CPU} "
              "during a measurement: these figures are disturbed; rerun on an idle machine")
    print(f"   gen CPU: the generator's process tree, in % of one core; other load: CPU "
          f"{CLIENT_CPU} busy with other processes over the same window")
    seed, bare = by_key.get("b"), by_key.get("c")
    if seed and bare and seed.rps and bare.rps:
        print(f"   seed client through our workers vs the bare aiohttp loop (b / c): "
              f"{seed.rps / bare.rps:.2f}x")


def noop_lines(bench: Bench, floors: Floors) -> list[str]:
    """The no-op rate of one worker, then the bare loop's in the same run (issue 22)."""
    lines = []
    try:
        done = bench.noop()
    except LoadmasterFailed as e:
        print(f"noop: {e}", file=sys.stderr)
        lines.append("no-op: loadmaster failed (details on stderr)")
    else:
        f = done.final
        cpu, other = usage(done.run, *(done.load_window() or (None, None)))
        floors.noop = Measured("no-op", f.success / f.run_time, cpu)
        lines.append(f"no-op execute(), 1 worker, {NOOP_USERS} clients, wait_time 0: "
                     f"{f.success / f.run_time:,.0f} calls/s ({f.success:,} in "
                     f"{f.run_time:.3f} s, fail {f.fail}); generator CPU {pct(cpu)}, "
                     f"other load {pct(other)}")
    print("running the bare no-op loops ...", file=sys.stderr, flush=True)
    bare, inline = bench.noop_loop(), bench.noop_loop(inline=True)
    if bare.rps is None:
        return [*lines, f"no-op baseline: {bare.note}"]
    floors.bare = Measured("bare loop", bare.rps, bare.cpu)
    lines.append(
        f"no-op baseline, a bare loop (_noop_loop.py): {NOOP_USERS} tasks on uvloop, "
        "await noop(), perf_counter_ns() before and after, Histogram.record(): "
        f"{bare.rps:,.0f} calls/s; CPU {pct(bare.cpu)}, other load {pct(bare.other)}")
    if floors.noop is not None:
        lines.append(f"no-op / bare loop: {floors.noop.rate / bare.rps:.3f}, floor "
                     f"{NOOP_FLOOR:.2f}")
    if inline.rps is not None and floors.noop is not None:
        lines.append(
            f"  (a diagnosis, not the floor: the bare loop recording as the worker's call loop "
            f"does, one perf_counter_ns() a call and bucket_index inlined: {inline.rps:,.0f} "
            f"calls/s, CPU {pct(inline.cpu)}; no-op / it: {floors.noop.rate / inline.rps:.3f})")
    return lines


def memory_line(bench: Bench, many: int, floors: Floors) -> str:
    try:
        few_run, many_run = bench.idle(IDLE_FEW), bench.idle(many)
    except LoadmasterFailed as e:
        print(f"memory: {e}", file=sys.stderr)
        return "memory: loadmaster failed (details on stderr)"
    rss = []
    for done in (few_run, many_run):
        workers = done.worker_pids()
        if len(workers) != 1:
            return f"memory: expected 1 worker process, found {sorted(workers)}"
        window = done.load_window()
        if window is None:
            return "memory: no live console block to place the measurement"
        # Up to a second before the last live block: the stop's cancellations are not idle.
        rss.append(done.run.peak_rss(workers, window[0], window[1] - 1.0))
    per_client = (rss[1] - rss[0]) / (many - IDLE_FEW)
    floors.idle_kib = per_client / 1024
    cancelled = many_run.final.errors.get("Cancelled", 0)
    others = {k: v for k, v in many_run.final.errors.items() if k != "Cancelled"}
    connected = f"{cancelled:,} of {many:,} clients held their connection to the stop" + (
        f"; other errors: {others}" if others else "")
    return (f"memory per idle client (1 worker, built-in client, connected, execute() asleep): "
            f"{per_client / 1024:.2f} KiB = (peak worker RSS {rss[1] / 2**20:.1f} MiB with "
            f"{many:,} clients - {rss[0] / 2**20:.1f} MiB with {IDLE_FEW}) / "
            f"{many - IDLE_FEW:,}; {connected}")


def open_rounds(bench: Bench, rounds: int) -> list[OpenRound]:
    """Each round: (i), then (ii) and (iii) from (i)'s rate, in turn first."""
    done: list[OpenRound] = []
    for n in range(rounds):
        print(f"running open, round {n + 1} of {rounds} ...", file=sys.stderr, flush=True)
        try:
            closed = bench.open_run("i", None)
            rate = closed.final.rps
            later = [("ii", round(rate * OPEN_OVER)), ("iii", round(rate * OPEN_HELD))]
            if n % 2:
                later.reverse()
            runs = {step: bench.open_run(step, r) for step, r in later}
        except LoadmasterFailed as e:
            print(f"open, round {n + 1}: {e}", file=sys.stderr)
            continue
        done.append((closed, runs["ii"], runs["iii"]))
    return done


def exactness_lines(args: argparse.Namespace, tmp: Path, keys: list[str],
                    floors: Floors) -> list[str]:
    duration = min(args.duration, EXACT_MAX_DURATION)
    exact_args = argparse.Namespace(users=args.users, duration=duration)
    lines = []
    for key in keys:
        with target_server(counting=True) as target:
            bench = Bench(exact_args, tmp, target)
            before = target.served()
            try:
                result = {"a": bench.builtin_client, "b": bench.seed_client,
                          "i": bench.fixed_client}[key]()
            except LoadmasterFailed as e:
                print(f"exactness {key}: {e}", file=sys.stderr)
                lines.append(f"exactness {key}: loadmaster failed (details on stderr)")
                floors.exact[key] = "FAILED"
                continue
            served = target.served() - before
        verdict = "EXACT" if result.requests == served and result.errors == 0 else "MISMATCH"
        floors.exact[key] = verdict
        lines.append(f"exactness {key} ({result.label}, {duration} s, counting target): "
                     f"success count {result.requests:,}, fail count {result.errors}, "
                     f"target served {served:,}: {verdict}")
    return lines


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({model or platform.machine()}), Linux "
            f"{platform.release()}, Python {platform.python_version()}")


def tool_versions(target: Target) -> str:
    versions = [target.description]
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        versions.append((out.stdout + out.stderr).split(" [")[0].strip())
    if importlib.util.find_spec("locust"):
        from importlib.metadata import version

        versions.append(f"locust {version('locust')}")
    return "; ".join(versions)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per variant")
    parser.add_argument("--users", type=int, default=50, help="concurrent clients")
    parser.add_argument("--only", default="",
                        help=f"comma-separated: {','.join([*LETTERS, *EXTRAS])}")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 10,000-client run")
    parser.add_argument("--no-nginx", action="store_true",
                        help="use bench/_counting_target.py even if nginx is installed")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of the open variant, interleaved")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or [*LETTERS, *EXTRAS]
    unknown = set(chosen) - {*LETTERS, *EXTRAS}
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    if args.skip_memory and "memory" in chosen:
        chosen.remove("memory")
    if args.duration < 2 or args.users < 1 or args.rounds < 1:
        parser.error("--duration must be at least 2, --users and --rounds at least 1")
    args.chosen = chosen
    return args


def main() -> None:
    args = parse_args()

    interrupt_on_signals()
    nofile = raise_fd_limit()
    many = min(IDLE_MANY, nofile - 500)
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 CPUs: target and generator share one core",
              file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    try:
        results: list[Result] = []
        extras: list[str] = []
        floors = Floors()
        with target_server(not args.no_nginx, connections=NGINX_CONNECTIONS) as target:
            bench = Bench(args, tmp, target)
            versions = tool_versions(target)
            for key in (k for k in LETTERS if k in args.chosen):
                results.append(_run_variant(bench, key))
            if "noop" in args.chosen:
                print("running noop ...", file=sys.stderr, flush=True)
                extras += noop_lines(bench, floors)
            if "memory" in args.chosen:
                print(f"running memory ({IDLE_FEW} and {many:,} clients) ...", file=sys.stderr,
                      flush=True)
                extras.append(memory_line(bench, many, floors))
            if "open" in args.chosen:
                extras += [""] if extras else []
                extras += open_lines(open_rounds(bench, args.rounds), args.users)
        if "exact" in args.chosen:
            print("running exact ...", file=sys.stderr, flush=True)
            keys = [k for k in ("a", "b", "i") if k in args.chosen] or ["a", "i"]
            extras.extend(exactness_lines(args, tmp, keys, floors))
        if "scale" in args.chosen:  # its own target, not pinned: after the others' is gone
            extras += [""] if extras else []
            extras += scale_lines(tmp, args.duration, not args.no_nginx)
        rates = {r.key: Measured(r.key, r.rps, r.cpu) for r in results if r.rps is not None}
        floors.ours, floors.wrk, floors.ceiling = rates.get("a"), rates.get("e"), rates.get("f")
        floors.api_bound, floors.fixed_bound = rates.get("g"), rates.get("h")
        floors.fixed = rates.get("i")
        print(f"date:      {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
        print(f"machine:   {machine()}")
        print(f"target:    {versions}; target on CPU {SERVER_CPU}, generators on CPU "
              f"{CLIENT_CPU}")
        print(f"workload:  POST {PATH} with {DATA_FILE} (443 B), {args.users} clients, "
              f"keep-alive, no wait, {args.duration} s per variant")
        if results:
            print()
            print_table(results)
        if extras:
            print()
            print("\n".join(extras))
        if set(args.chosen) & {"a", "e", "f", "g", "h", "i", "noop", "memory", "exact"}:
            print()
            print("\n".join(floors.lines()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
