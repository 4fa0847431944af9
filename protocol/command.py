"""The shape both command lines share: a typer app with ``--version``."""


from typing import Annotated

import typer

from protocol import __version__

__all__ = ["new_app"]


def new_app(prog: str, summary: str) -> typer.Typer:
    """A typer app for ``prog`` whose root takes ``--version``."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, help=summary)

    def print_version(value: bool) -> None:
        if value:
            print(f"{prog} {__version__}")
            raise typer.Exit()

    @app.callback(help=summary)
    def root(
        version: Annotated[bool, typer.Option(
            "--version", callback=print_version, is_eager=True,
            help="Print the version and exit.")] = False,
    ) -> None:
        pass

    return app
