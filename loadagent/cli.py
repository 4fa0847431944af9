"""`loadagent start`: the agent daemon's command line."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import sys
from multiprocessing import forkserver
from typing import Annotated

import typer

from protocol.command import new_app
from protocol.cpus import parse_cpu_list
from protocol.fdlimit import raise_open_files_limit
from protocol.wire.channel import CONTROL_PORT, EndpointError, parse_endpoint, tcp_endpoint
from protocol.wire.limits import JOB_MAX, JOB_MIN
from protocol.wire.messages import TOKEN_ENV

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
) -> None:
    """Dial the master and run its jobs until stopped (Ctrl-C or SIGTERM)."""
    import asyncio

    from loadagent.daemon import AgentDaemon, AgentOptions

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s loadagent %(levelname)s %(message)s")
    try:
        parse_endpoint(master)
    except EndpointError as e:
        raise typer.BadParameter(f"--master {e}") from None
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
    )
    code = asyncio.run(AgentDaemon(opts, mp).run())
    raise typer.Exit(code)


def main() -> None:
    app()
