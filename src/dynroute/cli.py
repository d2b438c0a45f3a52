"""The `dynroute` command line: thin recipes over the library.

Each subcommand lives in ``dynroute/commands/<name>.py`` and registers itself
through a ``register(app)`` function; adding a module there adds the command.
Command modules import heavy dependencies inside their functions so that
``dynroute --help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

import dynroute.commands

app = typer.Typer(
    name="dynroute",
    help="Dynamic routing for Mixture-of-Experts: train, evaluate, analyze, patch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

ORDER = ["demo", "train", "eval", "analyze", "patch"]


def _command_modules() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(dynroute.commands.__path__)]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


for _name in _command_modules():
    importlib.import_module(f"dynroute.commands.{_name}").register(app)


def main() -> None:
    """Entry point of the `dynroute` console script."""
    app()


if __name__ == "__main__":
    main()
