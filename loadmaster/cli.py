"""`loadmaster run -f conf.yml` and `loadmaster demo`: the only place that picks exit codes."""

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
from loadmaster.config import Config, ConfigError, load_config
from loadmaster.dashboard import DEFAULT_PORT, DashOptions
from loadmaster.result import Ending, ResultFileError, build_result, check_writable, save_result
from loadmaster.run import Run, RunFailed, RunOptions
from protocol.bundle import BundleError
from protocol.command import new_app
from protocol.cpus import parse_cpu_list
from protocol.exitcodes import ExitCode
from protocol.fdlimit import raise_open_files_limit
from protocol.wire.channel import CONTROL_PORT, EndpointError, parse_host_port

app = new_app("loadmaster", "Distributed load tester: drives loadagent workers and reports.")


def _fail(code: int, message: str) -> typer.Exit:
    print(f"loadmaster: {message}", file=sys.stderr)
    return typer.Exit(code)


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
    """The result file of a run stopped by a check before it started (no run id, no load)."""
    if opts.out is None:
        return
    error = f"{failed}\n{failed.detail}".rstrip() if failed.detail else str(failed)
    ending = Ending(run_id=None, t0=None, end=time.time(), exit_code=failed.code, error=error)
    save_result(opts.out, lambda: build_result(cfg, opts.mask, ending))


def run_config(conf: Path, overrides: dict[str, Any], opts: RunOptions,
               log_level: str = "") -> int:
    try:
        cfg = load_config(conf, overrides)
    except ConfigError as e:
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
    print(f"shipping {len(bundle.files)} file(s): {bundle.describe()}", file=sys.stderr)
    if cfg.enable_dash:
        opts.dash.enabled = True
    raise_open_files_limit()  # the stats socket holds a connection per worker
    try:
        return asyncio.run(Run(cfg, bundle, opts, sys.stdout).execute())
    except RunFailed as e:
        raise _fail(e.code, str(e)) from None
    except Exception:
        print(traceback.format_exc(), file=sys.stderr, end="")
        raise _fail(ExitCode.INTERNAL, "internal error (the traceback above is ours: "
                                       "please report it)") from None


@app.command()
def run(
    file: Annotated[Path, typer.Option("-f", "--file", help="The YAML config.")],
    users: Annotated[int | None, typer.Option(help="Override `users`.")] = None,
    hatch_rate: Annotated[float | None, typer.Option(help="Override `hatch_rate`.")] = None,
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
) -> None:
    """Run a load test described by a YAML config."""
    overrides: dict[str, Any] = {}
    for key, value in (("users", users), ("hatch_rate", hatch_rate), ("run_time", run_time),
                       ("host", host), ("agents", agents)):
        if value is not None:
            overrides[key] = value
    if worker is not None:
        overrides["worker"] = int(worker) if worker.isdigit() else worker
    try:
        bind_host, bind_port = parse_bind(bind)
        if cpu_list:
            check_cpu_list(cpu_list)
        if any(not key.strip() for key in mask or ()):
            raise ValueError("--mask: expected a config key, got an empty one")
        if out is not None:
            check_writable(out)
        dash_opts = parse_dash(dash, dash_bind, no_browser, dash_keep)
    except (ValueError, ResultFileError) as e:
        raise _fail(ExitCode.USAGE, str(e)) from None
    opts = RunOptions(bind_host, bind_port, cpu_list, out=out, mask=tuple(mask or ()),
                      dash=dash_opts)
    code = run_config(file, overrides, opts, log_level)
    raise typer.Exit(code)


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
