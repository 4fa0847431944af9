"""`loadagent start`: the agent daemon's command line."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import sys
import time
from multiprocessing import forkserver
from pathlib import Path
from typing import Annotated

import typer

from loadagent.status import MAX_AGE, read_statuses
from protocol.command import new_app
from protocol.cpus import parse_cpu_list
from protocol.fdlimit import raise_open_files_limit
from protocol.security import (
    Curve,
    KeyFileError,
    KeyPair,
    load_keypair,
    load_public,
    write_keys,
)
from protocol.wire.channel import (
    CONTROL_PORT,
    EndpointError,
    is_loopback,
    parse_endpoint,
    tcp_endpoint,
)
from protocol.wire.limits import JOB_MAX, JOB_MIN
from protocol.wire.messages import KEYS_ENV, TOKEN_ENV

app = new_app("loadagent", "Load-generating agent: dials a loadmaster and runs its jobs.")


@app.command()
def start(
    master: Annotated[str, typer.Option(help="The master's control address, tcp://HOST:PORT.")]
    = tcp_endpoint("127.0.0.1", CONTROL_PORT),
    name: Annotated[str, typer.Option(
        help="This agent's name in reports.", show_default="HOSTNAME-PID")] = "",
    workers: Annotated[int, typer.Option(
        help="Worker processes for configs that say `worker: auto`; 0 = one per core.",
        show_default="one per core")] = 0,
    cpu_list: Annotated[str, typer.Option(
        help="Pin this agent and its workers to these CPUs, e.g. 0,2-3.",
        show_default="all this process may use")] = "",
    max_message: Annotated[int, typer.Option(
        help="Largest job (bundle included) this agent accepts, in bytes: 65536 to 67108864.")]
    = JOB_MAX,
    embedded: Annotated[bool, typer.Option(hidden=True)] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    key: Annotated[Path | None, typer.Option(
        "--key", metavar="DIR",
        help="This agent's CURVE key pair (a `loadagent keygen` folder); with --master-key.")]
    = None,
    master_key: Annotated[Path | None, typer.Option(
        "--master-key", metavar="FILE",
        help="The master's public key file: talk to that master only; with --key.")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Dial a master beyond loopback without keys.")] = False,
) -> None:
    """Dial the master and run its jobs until stopped (Ctrl-C or SIGTERM)."""
    import asyncio

    from loadagent.daemon import AgentDaemon, AgentOptions

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s loadagent %(levelname)s %(message)s")
    try:
        host, _ = parse_endpoint(master)
    except EndpointError as e:
        raise typer.BadParameter(f"--master {e}") from None
    try:
        env_keys = os.environ.pop(KEYS_ENV, "")
        curve = agent_curve(key, master_key, env_keys if embedded else "")
    except (KeyFileError, ValueError) as e:
        raise typer.BadParameter(str(e)) from None
    if curve is None and not is_loopback(host):
        if not insecure:
            raise typer.BadParameter(
                f"--master {master}: beyond this machine, a master must be pinned by its key: "
                f"give --key and --master-key (README: Security), or --insecure on a network "
                f"you trust (whoever answers on that address runs code here)")
        logging.getLogger("loadagent").warning(
            "--insecure: the master at %s is not authenticated: whoever answers there runs "
            "code on this machine", master)
    elif curve is not None and insecure:
        raise typer.BadParameter("--insecure with keys: the keys are the secure way; drop it")
    if cpu_list:
        try:
            os.sched_setaffinity(0, parse_cpu_list(cpu_list))
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        except OSError as e:
            raise typer.BadParameter(f"--cpu-list {cpu_list!r}: {e}") from None
    token = os.environ.pop(TOKEN_ENV, "")  # before the forkserver copies the environment
    if not 0 <= workers <= 4096:
        raise typer.BadParameter(f"--workers {workers}: expected 1 to 4096 (0: one per core)")
    if not JOB_MIN <= max_message <= JOB_MAX:
        raise typer.BadParameter(f"--max-message {max_message}: expected {JOB_MIN} to {JOB_MAX} "
                                 f"(64 KiB to 64 MiB)")
    cores = len(os.sched_getaffinity(0))
    raise_open_files_limit()  # a connection per client: the forkserver's workers inherit it
    # Before any socket or loop exists: workers come from this clean forkserver.
    mp = multiprocessing.get_context("forkserver")
    mp.set_forkserver_preload(["protocol", "uvloop", "zmq", "loadagent.worker"])
    forkserver.ensure_running()  # now, not at the first job: its imports take a while
    opts = AgentOptions(
        master=master,
        name=name or f"{socket.gethostname()}-{os.getpid()}",
        workers=workers if workers > 0 else cores,
        max_message=max_message,
        token=token,
        embedded=embedded,
        curve=curve,
    )
    code = asyncio.run(AgentDaemon(opts, mp).run())
    raise typer.Exit(code)


def agent_curve(key: Path | None, master_key: Path | None, env: str) -> Curve | None:
    """This agent's CURVE settings: from --key and --master-key, or (embedded) from the
    keys its master put in its environment; None without keys."""
    if env:
        public, secret, server = (k.encode("ascii") for k in env.split())
        return Curve(KeyPair(public, secret), server)
    if key is None and master_key is None:
        return None
    if key is None or master_key is None:
        given, missing = ("--key", "--master-key") if master_key is None else \
            ("--master-key", "--key")
        raise ValueError(f"{missing} is required with {given}")
    return Curve(load_keypair(key), load_public(master_key, "--master-key"))


@app.command()
def status(
    max_age: Annotated[float, typer.Option(
        help="Seconds since an agent's last beat after which it counts as stuck.")]
    = MAX_AGE,
) -> None:
    """Whether a `loadagent start` on this machine is alive (its loop turns): exit 0 when
    one is, 1 when none is (a container HEALTHCHECK runs this)."""
    now = time.time()
    statuses = read_statuses()
    healthy = [s for s in statuses if s.healthy(now, max_age)]
    for s in statuses:
        if s.alive:
            mark = "ok" if s.healthy(now, max_age) else "STUCK"
            print(f"agent {s.name} (pid {s.pid}): {mark}, {s.state}, master {s.master}, last "
                  f"beat {now - s.at:.1f} s ago")
    if not healthy:
        print("no healthy loadagent on this machine", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def keygen(
    folder: Annotated[Path, typer.Argument(
        help="Where to write the pair (created if missing).", show_default=False)],
    name: Annotated[str, typer.Option(help="The files' name: NAME.key, NAME.key_secret.")]
    = "agent",
) -> None:
    """Write a CURVE key pair for --key: NAME.key (public: put it in the master's
    --authorized-agents folder) and NAME.key_secret (readable by you only)."""
    write_keys(folder, name, "loadagent")


def main() -> None:
    app()
