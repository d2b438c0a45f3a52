"""What every `dynroute` command shares: its flags, its error path and its output helpers.

One meaning per flag name across commands. A command takes a shared flag by annotating
a parameter with the alias below (``json_out: Json = False``), so the name, type and help
are the same everywhere; ``tests/cli`` checks that no command declares one of these
names any other way.

=================  =====================================================================
flag               meaning
=================  =====================================================================
``--json``         print the result as one JSON object on stdout (messages: stderr)
``--progress``     progress bars and per-step lines (``--no-progress``: quiet)
``--threads``      torch CPU threads of this process
``--device``       where the model runs: auto, cpu, cuda, cuda:I
``--data``         the data to read: a corpus (LM commands), domains (lora), an outcome
                   table's dataset (llm)
``--seed``         the random seed
``--steps``        optimizer steps
``--router``       an MoE router spec, ``name:key=value,...`` (``dynroute.routing``)
``--experts``      an expert-kind spec, ``name:key=value,...`` (``dynroute.layers``)
``--query-router`` a query router spec (``dynroute.llm``), repeatable where compared
=================  =====================================================================

The model or run folder a command works on is its first positional argument
(``dynroute eval RUN``, ``dynroute lora train BASE``, ``dynroute llm serve ROUTER``).

Errors: :func:`command` wraps every command in :func:`user_errors`, which turns the
library's user errors (a bad value, a missing file, an unknown name, a plugin that does
not import) into one red ``error: ...`` line on stderr, printed as plain text (a
``[model]`` in the message stays), with exit code 2; Ctrl-C exits with 130 and says how to
resume. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

__all__ = [
    "SHARED_FLAGS",
    "USAGE_ERROR",
    "USER_ERRORS",
    "AllowNoKey",
    "ApiKeyFile",
    "ApiKeys",
    "Config",
    "Corpus",
    "Database",
    "Device",
    "Experts",
    "Json",
    "MaxBodyBytes",
    "MaxConcurrent",
    "MaxTokensCap",
    "OptionalConfig",
    "Progress",
    "QueryRouters",
    "Router",
    "RunFolder",
    "Seed",
    "Steps",
    "Threads",
    "check_threads",
    "command",
    "fail",
    "interruptible",
    "print_json",
    "print_table",
    "server_keys",
    "set_threads",
    "status",
    "table",
    "trained",
    "user_errors",
]

USAGE_ERROR = 2  # click's code for a bad command line; ours for every user error
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

# The library's user errors: ConfigMismatchError, CorruptFileError, CorpusError,
# CheckpointError, TableError, UnsupportedModelError are ValueErrors; a bad router
# parameter is a TypeError; a missing file or a busy port an OSError; a plugin that does
# not import an ImportError. (Caught by base class: importing the library's classes here
# would import torch before `dynroute --help` prints.)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, ImportError)

F = TypeVar("F", bound=Callable[..., Any])


# ----------------------------------------------------------------------------- flags

Json = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the result as one JSON object on stdout (messages go to stderr)."
    ),
]
Progress = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress",
        help="Show progress bars and per-step lines (off with --json on stdout).",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="torch CPU threads of this process (unset or 0: the config's, else torch's "
        "default; 1 is fastest for small models on a busy machine).",
    ),
]
Device = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="Where the model runs: auto (CUDA when present) | cpu | cuda | cuda:I "
        "(default: the config's, else auto).",
    ),
]
Seed = Annotated[
    int | None,
    typer.Option("--seed", help="Random seed (default: the config's, else 0)."),
]
Steps = Annotated[
    int | None,
    typer.Option("--steps", help="Optimizer steps (default: the config's)."),
]
Router = Annotated[
    str | None,
    typer.Option(
        "--router",
        help="MoE router as name:key=value,... (e.g. top_p:p=0.4, null_experts:k=2,num_null=4, "
        "or one of your own); default: the config's.",
    ),
]
Experts = Annotated[
    str | None,
    typer.Option(
        "--experts",
        help="Expert kind as name:key=value,... (e.g. swiglu, mlp, or one of your own); "
        "default: the config's.",
    ),
]
QueryRouters = Annotated[
    list[str] | None,
    typer.Option(
        "--query-router",
        help="Query router as name:key=value,... (e.g. knn:k=10); repeat it to compare "
        "several, or pass all for every registered one.",
    ),
]
Corpus = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Text: a file (read whole), a folder of text files, a saved datasets folder, "
        "or stdlib (default: the config's, or the run's).",
    ),
]
_CONFIG_HELP = "TOML run config (see configs/)."
Config = Annotated[Path, typer.Option("--config", help=_CONFIG_HELP)]
OptionalConfig = Annotated[Path | None, typer.Option("--config", help=_CONFIG_HELP)]
RunFolder = Annotated[
    Path, typer.Option("--out", help="Run folder; rerun the same command to resume.")
]

# flag name -> alias: one declaration per name (tests/cli iterates this)
SHARED_FLAGS: dict[str, Any] = {
    "--json": Json,
    "--progress": Progress,
    "--threads": Threads,
    "--device": Device,
    "--seed": Seed,
    "--steps": Steps,
    "--router": Router,
    "--experts": Experts,
    "--query-router": QueryRouters,
    "--config": Config,
}


# ---------------------------------------------------------------------------- errors


def fail(message: str, code: int = USAGE_ERROR, style: str = "red") -> typer.Exit:
    """Print ``error: message`` on stderr as one plain line; the ``typer.Exit`` to raise.

    The message is never read as rich markup, so ``x.toml [model]: ...`` keeps its brackets.

    Example:
        >>> fail("x.toml [model]: unknown key(s) ['width']").exit_code  # stderr: the line
        2
    """
    from rich.console import Console
    from rich.text import Text

    prefix = "error: " if code == USAGE_ERROR else ""
    Console(stderr=True, soft_wrap=True).print(Text(prefix + message, style=style))
    return typer.Exit(code)


def plain_warning(fallback: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints dynroute's own warnings as one plain line on
    stderr (``warning: ...``, no file and source line); other libraries' go to
    ``fallback``."""

    def show(message: Any, category: type, filename: str, lineno: int, *rest: Any) -> None:
        if f"{os.sep}dynroute{os.sep}" in filename:
            print(f"warning: {message}", file=sys.stderr)
        else:
            fallback(message, category, filename, lineno, *rest)

    return show


@contextlib.contextmanager
def user_errors(interrupted: str = "interrupted") -> Iterator[None]:
    """Turn user errors into one line and exit code 2; Ctrl-C into ``interrupted`` and 130.

    Example:
        >>> try:
        ...     with user_errors():
        ...         raise ValueError("x.toml [model]: unknown key(s) ['width']")
        ... except typer.Exit as stop:
        ...     stop.exit_code
        2
    """
    try:
        with warnings.catch_warnings():  # restores showwarning on the way out
            warnings.showwarning = plain_warning(warnings.showwarning)
            yield
    except KeyboardInterrupt as err:  # the engine's TrainingInterrupted says how to resume
        raise fail(str(err) or interrupted, INTERRUPTED, "yellow") from None
    except USER_ERRORS as err:
        raise fail(str(err)) from None


@contextlib.contextmanager
def interruptible(threads: int | None = None, enabled: bool = True) -> Iterator[None]:
    """Train in this process: :func:`set_threads` ``threads``; Ctrl-C finishes the training
    step, checkpoints and stops (exit 130, rerun resumes), a second Ctrl-C stops at once.
    Process settings, so the command's, not the library's.
    """
    set_threads(threads)
    if not enabled:
        yield
        return
    from dynroute.train.interrupt import stop_on_sigint

    with stop_on_sigint():
        yield


def command(func: F) -> F:
    """Decorator of every command function: runs it inside :func:`user_errors`."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return func(*args, **kwargs)

    return run  # type: ignore[return-value]


ApiKeys = Annotated[
    list[str] | None,
    typer.Option(
        "--api-key",
        help="Accepted client key (repeat for several): requests need 'Authorization: Bearer "
        "KEY' (/health excepted). Also --api-key-file and DYNROUTE_API_KEY.",
    ),
]
ApiKeyFile = Annotated[
    Path | None, typer.Option(help="File of accepted client keys, one a line (# comments).")
]
AllowNoKey = Annotated[
    bool,
    typer.Option(
        "--allow-no-key",
        help="Serve on a non-loopback --host without any key (anyone who reaches it may use it).",
    ),
]


MaxConcurrent = Annotated[
    int,
    typer.Option(
        min=0,
        help="Most requests in flight per client (its API key, else its address); more: 429 "
        "with Retry-After. 0: no limit.",
    ),
]


Database = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="The proxy's database for keys, budgets and the decision log: sqlite:///PATH or "
        "postgresql://USER:PASSWORD@HOST:PORT/DB (default: none; a keys file with budgets: "
        "sqlite next to it, KEYS.db).",
    ),
]


def server_keys(
    host: str, keys: list[str] | None, key_file: Path | None, allow_no_key: bool
) -> frozenset[str]:
    """The keys a server command accepts; refuses a keyless non-loopback ``host`` in one line
    (:mod:`dynroute.serve.auth`)."""
    from dynroute.serve.auth import check_exposure, load_keys

    accepted = load_keys(keys, key_file)
    check_exposure(host, accepted, allow_no_key)
    return accepted


# ---------------------------------------------------------------------------- output


def check_threads(threads: int | None) -> None:
    """``--threads`` is an integer >= 0 (0: torch's default).

    Example:
        >>> check_threads(-3)
        Traceback (most recent call last):
        ValueError: --threads must be >= 0 (0: torch's default), got -3
    """
    if threads is not None and threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {threads}")


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads`` when given: a process setting, so the command's to make."""
    check_threads(threads)
    if threads:
        import torch

        torch.set_num_threads(threads)


def trained(result: Any, out: Path) -> str:
    """What a training command prints when done: steps, tokens, run folder, final loss.

    ``result``: a :class:`dynroute.train.TrainResult` with a final evaluation.
    """
    f = result.final
    return (
        f"done: {result.steps} steps, {result.tokens:,} tokens -> {out}\n"
        f"val loss {f['val_loss']:.4f}  ppl {f['perplexity']:.2f}"
    )


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> Any:
    """A terminal table: the first ``left`` columns left-aligned, the others (numbers) right;
    title and cells shown as written (never read as rich markup).

    Example:
        >>> table("x.toml [model]", ["metric", "value"], [("val loss", "1.5000")]).row_count
        1
    """
    from rich.markup import escape
    from rich.table import Table

    out = Table(title=escape(title))
    for i, name in enumerate(columns):  # names stay whole; numbers may not fold either
        out.add_column(name, justify="left" if i < left else "right", no_wrap=i < left)
    for row in rows:
        out.add_row(*map(escape, row))
    return out


@contextlib.contextmanager
def status(text: str, enabled: bool = True) -> Iterator[None]:
    """A spinner with ``text`` on stderr while one long step runs (a bar needs a count);
    nothing when not ``enabled`` (``--no-progress``, ``--json``)."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.markup import escape

    with Console(stderr=True).status(escape(text), spinner="dots"):
        yield


def print_table(table: Any, console: Any = None) -> None:
    """Print a rich table: fitted to a terminal, at its natural width to a pipe or a file
    (:func:`dynroute.common.tables.print_table`); ``console`` default: stdout."""
    from rich.console import Console

    from dynroute.common.tables import print_table as show

    show(console or Console(), table)


def print_json(payload: Any) -> None:
    """The ``--json`` output: one line of JSON on stdout.

    Example:
        >>> print_json({"val_loss": 1.5})
        {"val_loss": 1.5}
    """
    from dynroute.common.jsonfile import json_text

    print(json_text(payload, indent=None))  # NaN and inf as null: strict parsers read it


# ---------------------------------------------------------------------------- operations

BreakerThreshold = Annotated[
    int,
    typer.Option(
        min=1,
        help="Consecutive backend faults (unreachable, 5xx, 408, 429) that open a backend's "
        "circuit breaker: it is then tried only after the others.",
    ),
]
BreakerCooldown = Annotated[
    float,
    typer.Option(
        min=0.0, help="Seconds an open breaker waits before its backend is probed back in."
    ),
]
DrainTimeout = Annotated[
    float,
    typer.Option(
        min=0.0,
        help="On SIGTERM, seconds to let requests in flight (streams too) finish while new "
        "ones get 503; then the server exits.",
    ),
]
AdminKey = Annotated[
    str | None,
    typer.Option(
        help="Key of the admin endpoints (POST /admin/reload re-reads the router folder and "
        "prices file; so does SIGHUP). Also DYNROUTE_ADMIN_KEY. Without one: 403.",
    ),
]


def admin_key(key: str | None) -> str | None:
    """The admin key of a server command: ``--admin-key``, else ``DYNROUTE_ADMIN_KEY``."""
    from dynroute.serve.auth import load_admin_key

    return load_admin_key(key)


MaxBodyBytes = Annotated[
    int, typer.Option(min=1, help="Largest request body in bytes (larger: 413).")
]
MaxTokensCap = Annotated[
    int | None,
    typer.Option(min=1, help="Most max_tokens one request may ask for (more: 400)."),
]
