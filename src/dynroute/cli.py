"""The `dynroute` command line: thin recipes over the library.

Each command lives in ``dynroute/commands/<name>.py``, which defines the command
functions at module level and a ``register(app)`` function that adds them, and a ``RANK``:
where ``dynroute --help`` lists it, lowest first (unranked modules come last, by name;
typer lists single commands before groups, so groups such as ``llm`` rank above 50).
Adding a module there adds the command. Shared flags and the one error path are in
``dynroute/commands/options.py``. Command modules import heavy dependencies inside
their functions so that ``dynroute --help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

import typer

import dynroute.commands

UNRANKED = 1000

app = typer.Typer(
    name="dynroute",
    help="Dynamic routing for Mixture-of-Experts: train, evaluate, analyze, patch, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def command_modules() -> list[ModuleType]:
    """Every module of ``dynroute.commands`` with a ``register(app)``, in ``RANK`` order.

    Example:
        >>> [m.__name__.rsplit(".", 1)[1] for m in command_modules()][:3]
        ['demo', 'train', 'eval']
    """
    found = [
        importlib.import_module(f"dynroute.commands.{info.name}")
        for info in pkgutil.iter_modules(dynroute.commands.__path__)
    ]
    modules = [m for m in found if callable(getattr(m, "register", None))]
    return sorted(modules, key=lambda m: (getattr(m, "RANK", UNRANKED), m.__name__))


for _module in command_modules():
    _module.register(app)


def tidy_help(command: Any) -> Any:
    """``command`` (typer's click command of :data:`app`) with plainer ``--help`` pages:
    no ``<bool>`` type beside a flag, ``MODEL_DIR`` rather than ``{model_dir}`` for an
    argument. Walks every sub-command; returns ``command``.

    Example:
        >>> cmd = tidy_help(typer.main.get_command(app))
        >>> cmd.commands["eval"].params[0].metavar
        'CHECKPOINT'
    """
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
    ctx = command.context_class(command, info_name=command.name)
    for param in [*command.params, command.get_help_option(ctx)]:
        if param is None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.param_type_name == "argument" and param.metavar is None:
            param.metavar = param.name.upper()
    return command


def main() -> None:
    """Entry point of the `dynroute` console script."""
    tidy_help(typer.main.get_command(app))()


if __name__ == "__main__":
    main()
