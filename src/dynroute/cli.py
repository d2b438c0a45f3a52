"""The `dynroute` command line: thin recipes over the library.

Each subcommand lives in ``dynroute/commands/<name>.py`` and registers itself
through a ``register(app)`` function, so adding a command touches one line here.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="dynroute",
    help="Dynamic routing for Mixture-of-Experts: train, evaluate, analyze, benchmark, patch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

COMMANDS = [
    "dynroute.commands.demo",
    "dynroute.commands.bench",
]

for _name in COMMANDS:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Entry point of the `dynroute` console script."""
    app()


if __name__ == "__main__":
    main()
