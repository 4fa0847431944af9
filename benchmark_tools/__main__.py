"""``python -m benchmark_tools -f conf.yml [options]``: the seed's command line.

Equivalent to ``loadmaster run -f conf.yml [options]``: the same command function (its
options, ``--help``, output and exit codes), reached without the ``run`` subcommand.
"""

from __future__ import annotations

import sys

PROG_NAME = "python -m benchmark_tools"


def main(argv: list[str] | None = None) -> None:
    """Run ``loadmaster run`` with ``argv`` (default: this process's arguments); exits."""
    import typer

    from loadmaster import cli
    from protocol.exitcodes import ExitCode

    # loadmaster's `run` as the only command of its own app: usage and --help then read
    # "python -m benchmark_tools [OPTIONS]", with no subcommand name in between
    app = typer.Typer(add_completion=False, help=cli.app.info.help)
    app.command()(cli.run)
    try:
        app(sys.argv[1:] if argv is None else argv, prog_name=PROG_NAME)
    except KeyboardInterrupt:  # as loadmaster.cli.main does
        sys.exit(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    main()
