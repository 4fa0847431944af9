"""`loadmaster run -f conf.yml`, `report`, `compare` and `demo`: the only place that picks
exit codes."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

from loadmaster.bundle import build_bundle
from loadmaster.config import Config, load_config
from loadmaster.console import format_final
from loadmaster.dashboard import DEFAULT_PORT, DashOptions
from loadmaster.metrics import DEFAULT_PORT as METRICS_PORT
from loadmaster.outputs import Outputs, save_outputs, write_reports
from loadmaster.result import Ending, ResultFileError, build_result
from loadmaster.resultfile import ReportInputError, final_view, load_result
from loadmaster.run import Run
from loadmaster.run_options import MasterKeys, RunFailed, RunOptions
from loadmaster.summary import load_summary
from protocol.bundle import BundleError
from protocol.command import new_app
from protocol.cpus import parse_cpu_list
from protocol.exitcodes import ExitCode
from protocol.fdlimit import raise_open_files_limit
from protocol.security import KeyFileError, load_authorized, load_keypair, write_keys
from protocol.wire.channel import (
    CONTROL_PORT,
    EndpointError,
    host_port,
    is_loopback,
    parse_host_port,
)

app = new_app("loadmaster", "Distributed load tester: drives loadagent workers and reports.")


def _fail(code: int, message: str) -> typer.Exit:
    print(f"loadmaster: {message}", file=sys.stderr)
    return typer.Exit(code)


def _internal() -> typer.Exit:
    """Exit 1 for a bug of ours, its traceback shown (inside ``except``)."""
    print(traceback.format_exc(), file=sys.stderr, end="")
    return _fail(ExitCode.INTERNAL, "internal error (the traceback above is ours: please "
                                    "report it)")


def parse_bind(text: str) -> tuple[str, int]:
    """HOST, HOST:PORT, [V6]:PORT or :PORT; port 0 takes any free one."""
    try:
        return parse_host_port(text, CONTROL_PORT)
    except EndpointError as e:
        raise ValueError(f"--bind {e}") from None


def parse_dash(dash: bool, bind: str | None, no_browser: bool,
               keep: float | None) -> DashOptions:
    """The dashboard's options; enabled by --dash or --dash-bind here, or later by the
    config's ``enable_dash``."""
    if keep is not None and not (keep >= 0 and math.isfinite(keep)):
        raise ValueError(f"--dash-keep: expected seconds (0 or more), got {keep}")
    opts = DashOptions(enabled=dash or bind is not None, browser=not no_browser, keep=keep)
    if bind is not None:
        try:
            opts.host, opts.port = parse_host_port(bind, DEFAULT_PORT)
        except EndpointError as e:
            raise ValueError(f"--dash-bind {e}") from None
        opts.explicit = True
    return opts


def parse_metrics(text: str) -> tuple[str, int]:
    """PORT, HOST, HOST:PORT, [V6]:PORT or :PORT; loopback unless a host is given."""
    text = text.strip()
    try:
        host, port = parse_host_port(f":{text}" if text.isdigit() else text, METRICS_PORT)
    except EndpointError:
        raise ValueError(f"--metrics {text!r}: expected PORT, HOST, HOST:PORT or [IPv6]:PORT "
                         f"with a port from 0 to 65535") from None
    return host or "127.0.0.1", port


def check_cpu_list(text: str) -> None:
    """--cpu-list must name CPUs this machine has (the embedded agent pins to them)."""
    cpus = parse_cpu_list(text)
    have = os.sched_getaffinity(0)
    if not cpus <= have:
        raise ValueError(f"--cpu-list {text!r}: this machine has CPUs "
                         f"{','.join(map(str, sorted(have)))}")


def _check_client_compiles(path: Path) -> None:
    """The client file must compile here, before any agent is contacted."""
    try:
        compile(path.read_bytes(), str(path), "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte in the source
        # the user's file, line and caret; not our own frames
        detail = "".join(traceback.format_exception_only(e))
        print(detail, file=sys.stderr, end="")
        failed = RunFailed(ExitCode.CLIENT_FAILED, f"{path}: the client file does not "
                                                   f"compile; no load was started")
        failed.detail = detail
        raise failed from None


def _early_result(cfg: Config, opts: RunOptions, failed: RunFailed) -> None:
    """The result file and reports of a run stopped by a check before it started (no run
    id, no load)."""
    error = f"{failed}\n{failed.detail}".rstrip() if failed.detail else str(failed)
    ending = Ending(run_id=None, t0=None, end=time.time(), exit_code=failed.code, error=error)
    save_outputs(opts.outputs, lambda: build_result(cfg, opts.mask, ending))


def master_keys(key: Path | None, authorized: Path | None, cfg: Config,
                insecure: bool) -> MasterKeys | None:
    """The master's CURVE keys from --key and --authorized-agents, or else the config's
    ``security:``; None without keys. ValueError (KeyFileError) names what is wrong."""
    if key is None and authorized is None and cfg.security is not None:
        where = f"{cfg.path}: key 'security'"
        key, authorized = Path(cfg.security["key"]), Path(cfg.security["authorized_agents"])
    else:
        where = ""
    if key is None and authorized is None:
        return None
    if key is None or authorized is None:
        missing = "--key" if key is None else "--authorized-agents"
        raise ValueError(f"{missing} is required with "
                         f"{'--authorized-agents' if key is None else '--key'}")
    if insecure:
        raise ValueError("--insecure with keys: the keys are the secure way; drop --insecure")
    try:
        return MasterKeys(load_keypair(key), load_authorized(authorized))
    except KeyFileError as e:
        raise ValueError(f"{where}: {e}" if where else str(e)) from None


def check_bind(host: str, keys: MasterKeys | None, insecure: bool) -> None:
    """Agents run the code the master sends: beyond this machine only with keys, or when
    told --insecure (warned about)."""
    if keys is not None or is_loopback(host):
        return
    if not insecure:
        raise ValueError(
            f"--bind {host_port(host)}: any host that reaches this address could join as an "
            f"agent (and read the client code and config) or forge figures; give the master "
            f"--key and --authorized-agents (README: Security), or --insecure on a network "
            f"you trust")
    print(f"loadmaster: warning: --insecure: the control and stats channels on "
          f"{host_port(host)} are not authenticated: any host that reaches them can join as "
          f"an agent (and read the test) or forge figures", file=sys.stderr)


def run_config(conf: Path, overrides: dict[str, Any], opts: RunOptions,
               log_level: str = "", key: Path | None = None,
               authorized: Path | None = None) -> int:
    try:
        cfg = load_config(conf, overrides)
        opts.keys = master_keys(key, authorized, cfg, opts.insecure)
        check_bind(opts.bind_host, opts.keys, opts.insecure)
    except ValueError as e:  # ConfigError, KeyFileError: each names the file or option
        raise _fail(ExitCode.USAGE, str(e)) from None
    level = log_level or ("warning" if cfg.agents == 0 else "info")
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s loadmaster %(levelname)s %(message)s")
    for warning in cfg.warnings:
        print(f"loadmaster: warning: {warning}", file=sys.stderr)
    try:
        _check_client_compiles(cfg.benchmark_class_file)
        try:
            bundle = build_bundle(Path.cwd(), cfg.benchmark_class_file, cfg.files, cfg.custom,
                                  remote=cfg.agents > 0)
        except BundleError as e:
            raise RunFailed(ExitCode.USAGE, f"{conf}: {e}") from None
    except RunFailed as e:
        _early_result(cfg, opts, e)
        raise _fail(e.code, str(e)) from None
    for warning in bundle.warnings:
        print(f"loadmaster: warning: {conf}: {warning}", file=sys.stderr)
    if not opts.quiet:
        print(f"shipping {len(bundle.files)} file(s): {bundle.describe()}", file=sys.stderr)
    if cfg.enable_dash:
        opts.dash.enabled = True
    raise_open_files_limit()  # the stats socket holds a connection per worker
    try:
        return asyncio.run(Run(cfg, bundle, opts, sys.stdout).execute())
    except RunFailed as e:
        raise _fail(e.code, str(e)) from None
    except Exception:
        raise _internal() from None


def run_once_config(conf: Path, overrides: dict[str, Any]) -> int:
    """--once (loadmaster/once.py): 0 when the call succeeded, 3 when the client failed."""
    from loadmaster.once import ClientFailed, run_once

    try:
        run_once(conf, overrides, sys.stdout, sys.stderr)
    except ValueError as e:  # ConfigError, BundleError: each names the file and key
        raise _fail(ExitCode.USAGE, str(e)) from None
    except ClientFailed as e:
        raise _fail(ExitCode.CLIENT_FAILED, str(e)) from None
    except Exception:
        raise _internal() from None
    return ExitCode.OK


@app.command()
def run(
    file: Annotated[Path, typer.Option("-f", "--file", help="The YAML config.")],
    users: Annotated[int | None, typer.Option(help="Override `users`.")] = None,
    hatch_rate: Annotated[float | None, typer.Option(help="Override `hatch_rate`.")] = None,
    arrival_rate: Annotated[float | None, typer.Option(
        help="Override `arrival_rate` (the open model: calls per `time_unit`).")] = None,
    run_time: Annotated[str | None, typer.Option(help="Override `run_time` (90, 90s, 2m).")]
    = None,
    worker: Annotated[str | None, typer.Option(help="Override `worker` (auto or a number).")]
    = None,
    host: Annotated[str | None, typer.Option(help="Override `host`.")] = None,
    agents: Annotated[int | None, typer.Option(
        help="Wait for this many `loadagent start` daemons (0 = a local embedded one).")] = None,
    bind: Annotated[str, typer.Option(
        help=f"Control address HOST[:PORT] agents dial; port {CONTROL_PORT} if omitted.",
        show_default=f"127.0.0.1:{CONTROL_PORT}")]
    = "127.0.0.1",
    cpu_list: Annotated[str, typer.Option(
        help="Pin the embedded agent and its workers to these CPUs, e.g. 1 or 0,2-3.")] = "",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "",
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write the result file here at the end (JSON; a name ending .gz is "
                      "gzip-compressed), also when the run fails or is interrupted.")] = None,
    mask: Annotated[list[str] | None, typer.Option(
        "--mask", metavar="<key>",
        help="Hide this config key's value in the result file (repeatable); keys containing "
             "token, secret, password or key are always hidden.")] = None,
    dash: Annotated[bool, typer.Option(
        "--dash", help="Serve the live dashboard (as `enable_dash: true`).")] = False,
    dash_bind: Annotated[str | None, typer.Option(
        help=f"Where the dashboard listens, HOST[:PORT] (implies --dash); without it "
             f"127.0.0.1:{DEFAULT_PORT}, or any free port when that one is busy.")] = None,
    no_browser: Annotated[bool, typer.Option(
        "--no-browser", help="Do not open the dashboard in a browser.")] = False,
    dash_keep: Annotated[float | None, typer.Option(
        help="When stdout is not a terminal, serve the final figures this many seconds "
             "after the run (on a terminal: until Ctrl-C).")] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write the HTML report here at the end (one self-contained file).")]
    = None,
    csv: Annotated[str | None, typer.Option(
        "--csv", metavar="PREFIX",
        help="Write PREFIX_stats.csv, PREFIX_failures.csv and PREFIX_stats_history.csv "
             "(Locust's columns) at the end.")] = None,
    json_summary: Annotated[Path | None, typer.Option(
        "--json", help="Write the JSON summary (the final block's figures) here at the end.")]
    = None,
    metrics: Annotated[str | None, typer.Option(
        "--metrics", metavar="[HOST:]PORT",
        help=f"Serve Prometheus metrics on http://HOST:PORT/metrics during the run (host "
             f"127.0.0.1 unless given; port {METRICS_PORT} if omitted).")] = None,
    metrics_keep: Annotated[float, typer.Option(
        help="Keep /metrics up this many seconds after the run, so a scraper reads the "
             "final figures (its scrape interval or more).")] = 0.0,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print only the final block (no live blocks or progress).")]
    = False,
    key_dir: Annotated[Path | None, typer.Option(
        "--key", metavar="DIR",
        help="This master's CURVE key pair (a `loadmaster keygen` folder): control and stats "
             "channels accept only --authorized-agents.")] = None,
    authorized_agents: Annotated[Path | None, typer.Option(
        "--authorized-agents", metavar="DIR",
        help="A folder of the agents' public key files (NAME.key); required with --key.")]
    = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Allow a --bind address other than loopback without keys.")]
    = False,
    once: Annotated[bool, typer.Option(
        "--once", help="Debug the client: one client, one call, in this process (a "
                       "breakpoint() works); print what it returned, the last responses or "
                       "the traceback. No agents, no load, no reports.")] = False,
) -> None:
    """Run a load test described by a YAML config."""
    overrides: dict[str, Any] = {}
    for key, value in (("users", users), ("hatch_rate", hatch_rate),
                       ("arrival_rate", arrival_rate), ("run_time", run_time),
                       ("host", host), ("agents", agents)):
        if value is not None:
            overrides[key] = value
    if worker is not None:
        overrides["worker"] = int(worker) if worker.isdigit() else worker
    if once:
        raise typer.Exit(run_once_config(file, overrides))
    try:
        bind_host, bind_port = parse_bind(bind)
        if cpu_list:
            check_cpu_list(cpu_list)
        if any(not key.strip() for key in mask or ()):
            raise ValueError("--mask: expected a config key, got an empty one")
        outputs = Outputs(out=out, html=html, csv=csv, json=json_summary)
        outputs.check()
        dash_opts = parse_dash(dash, dash_bind, no_browser, dash_keep)
        metrics_at = None if metrics is None else parse_metrics(metrics)
        if not (metrics_keep >= 0 and math.isfinite(metrics_keep)):
            raise ValueError(f"--metrics-keep: expected seconds (0 or more), got {metrics_keep}")
        if metrics_keep and metrics is None:
            raise ValueError("--metrics-keep: only with --metrics")
    except (ValueError, ResultFileError) as e:
        raise _fail(ExitCode.USAGE, str(e)) from None
    opts = RunOptions(bind_host, bind_port, cpu_list, outputs=outputs, mask=tuple(mask or ()),
                      dash=dash_opts, metrics=metrics_at, metrics_keep=metrics_keep,
                      quiet=quiet, insecure=insecure)
    code = run_config(file, overrides, opts, log_level, key_dir, authorized_agents)
    raise typer.Exit(code)


@app.command()
def keygen(
    folder: Annotated[Path, typer.Argument(
        help="Where to write the pair (created if missing).", show_default=False)],
    name: Annotated[str, typer.Option(help="The files' name: NAME.key, NAME.key_secret.")]
    = "master",
) -> None:
    """Write a CURVE key pair for --key: NAME.key (public: give it to the agents'
    --master-key) and NAME.key_secret (readable by you only)."""
    write_keys(folder, name, "loadmaster")


@app.command()
def report(
    result: Annotated[Path, typer.Argument(
        help="A result file (loadmaster run --out), plain or .gz.", show_default=False)],
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write the HTML report here (one self-contained file).")] = None,
    csv: Annotated[str | None, typer.Option(
        "--csv", metavar="PREFIX",
        help="Write PREFIX_stats.csv, PREFIX_failures.csv and PREFIX_stats_history.csv "
             "(Locust's columns).")] = None,
    json_summary: Annotated[Path | None, typer.Option(
        "--json", help="Write the JSON summary (the final block's figures) here.")] = None,
) -> None:
    """Re-render a run's reports from its result file; print its final block."""
    outputs = Outputs(html=html, csv=csv, json=json_summary)
    try:
        outputs.check()
        for opt, path in outputs.files():
            if path.resolve() == result.resolve():
                raise ResultFileError(f"{opt} {path}: that is the result file being read")
        doc = load_result(result)
    except (ResultFileError, ReportInputError) as e:
        raise _fail(ExitCode.USAGE, str(e)) from None
    view = final_view(doc)
    if view is not None:
        print(format_final(view))
    else:
        print(f"{result}: the run has no final block (exit code {doc['exit_code']}): "
              f"{doc['error'] or 'it failed before its load'}")
    try:
        write_reports(doc, outputs)
    except ResultFileError as e:
        raise _fail(ExitCode.INTERNAL, str(e)) from None
    except Exception:
        print(traceback.format_exc(), file=sys.stderr, end="")
        raise _fail(ExitCode.INTERNAL, f"internal error rendering {result} (the traceback "
                                       f"above is ours: please report it)") from None
    for opt, path in outputs.files():
        print(f"{opt}: {path}", file=sys.stderr)


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(
        help="The reference run: a result file or a JSON summary.", show_default=False)],
    b: Annotated[Path, typer.Argument(
        help="The run to judge, likewise.", show_default=False)],
    tolerance: Annotated[str, typer.Option(
        help="A change of rps or of a percentile beyond this is flagged.")] = "5%",
    fail_tolerance: Annotated[str, typer.Option(
        help="A change of the fail ratio beyond this many percentage points is flagged.")]
    = "1%",
) -> None:
    """Compare two runs per name; exit 8 when B regressed beyond the tolerance."""
    from loadmaster.compare import compare as compare_runs
    from loadmaster.compare import format_comparison, parse_percent

    try:
        tol = parse_percent(tolerance, "--tolerance")
        fail_tol = parse_percent(fail_tolerance, "--fail-tolerance")
        runs = [load_summary(path) for path in (a, b)]
    except (ValueError, ReportInputError) as e:
        raise _fail(ExitCode.USAGE, str(e)) from None
    for path, run in zip((a, b), runs, strict=True):
        if run["total"] is None:
            raise _fail(ExitCode.USAGE, f"{path}: the run has no final figures to compare "
                                        f"(exit code {run['exit_code']}): "
                                        f"{run['error'] or 'it failed before its load'}")
    labels = (str(a), str(b))
    result = compare_runs(runs[0], runs[1], tol, fail_tol, labels=("A", "B"))
    print(format_comparison(result, labels, tol, fail_tol))
    raise typer.Exit(ExitCode.REGRESSION if result.regressions else ExitCode.OK)


@app.command()
def demo(
    run_time: Annotated[str, typer.Option(help="How long the demo runs.")] = "10s",
    users: Annotated[int, typer.Option(help="Simulated clients.")] = 50,
) -> None:
    """Start the example target server and run the seed's example against it."""
    from loadmaster.demo import run_demo

    raise typer.Exit(run_demo(run_time, users))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(ExitCode.INTERRUPTED)
