"""Every registered command answers --help; a shared flag name means one thing everywhere.

The commands are found by walking what ``dynroute.cli`` registered (never a list here),
so a new module in ``dynroute/commands`` is covered as soon as it exists.
"""

from __future__ import annotations

import typing

import pytest
import typer
from typer.testing import CliRunner

from dynroute.cli import app, command_modules
from dynroute.commands import options

runner = CliRunner()


def leaf_commands() -> dict[str, typing.Any]:
    """``"llm eval"`` -> its click command, for every command registered on ``app``."""
    found: dict[str, typing.Any] = {}

    def walk(cmd: typing.Any, path: tuple[str, ...]) -> None:
        if hasattr(cmd, "commands"):  # a group (typer ships its own click)
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
        else:
            found[" ".join(path)] = cmd

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = leaf_commands()


def test_the_walk_finds_every_module_and_the_nested_commands() -> None:
    tops = {name.split()[0] for name in COMMANDS}
    assert len(tops) == len(command_modules())  # one top-level name per command module
    some = {"train", "eval", "llm eval", "llm serve", "bench frontier", "lora train"}
    assert some <= set(COMMANDS)


def test_commands_are_listed_in_rank_order() -> None:
    listed = list(typer.main.get_command(app).commands)  # what --help shows, in order
    ranks = {m.__name__.rsplit(".", 1)[1]: getattr(m, "RANK", 1000) for m in command_modules()}
    ordered = [ranks[name] for name in listed if name in ranks]
    assert ordered == sorted(ordered) and listed[:3] == ["demo", "train", "eval"]
    result = runner.invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0 and all(name in result.output for name in listed)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    result = runner.invoke(app, [*name.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def _help(alias: typing.Any) -> str:
    return typing.get_args(alias)[1].help


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_shared_flags_have_one_meaning(name: str) -> None:
    """A command that has a shared flag name declares it with the shared alias."""
    for param in COMMANDS[name].params:
        for flag in param.opts:
            if flag in options.SHARED_FLAGS:
                assert param.help == _help(options.SHARED_FLAGS[flag]), (name, flag)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_shared_aliases_declared_are_flags(name: str) -> None:
    """Every parameter annotated with a shared alias shows up as that flag."""
    callback = COMMANDS[name].callback
    hints = typing.get_type_hints(callback, include_extras=True)
    flags = {flag for param in COMMANDS[name].params for flag in param.opts}
    for alias_flag, alias in options.SHARED_FLAGS.items():
        declared = [p for p, hint in hints.items() if _help(alias) == _meta_help(hint)]
        assert not declared or alias_flag in flags, (name, alias_flag)


def _meta_help(hint: typing.Any) -> str | None:
    extras = typing.get_args(hint)[1:] if typing.get_origin(hint) is typing.Annotated else ()
    return next((getattr(e, "help", None) for e in extras), None)


def test_commands_that_train_or_evaluate_share_the_resource_flags() -> None:
    # every command that takes --progress runs for a while: it takes --threads too
    for name, cmd in COMMANDS.items():
        flags = {flag for param in cmd.params for flag in param.opts}
        if "--progress" in flags:
            assert "--threads" in flags, name
    for name in ("eval", "analyze", "patch", "posthoc"):
        flags = {flag for param in COMMANDS[name].params for flag in param.opts}
        assert {"--threads", "--progress", "--json"} <= flags, name


def test_routing_table_demo_prints_a_table() -> None:
    result = runner.invoke(app, ["demo", "--tokens", "64", "--num-experts", "8"])
    assert result.exit_code == 0, result.output
    assert "top_p" in result.output and "mean experts" in result.output


def test_help_pages_show_no_bool_type_and_upper_case_arguments() -> None:
    """`dynroute ... --help` as a user runs it (the entry point): a flag has no `<bool>`."""
    import subprocess
    import sys

    for args in ([], ["lora", "train"], ["eval"]):
        page = subprocess.run(
            [sys.executable, "-m", "dynroute.cli", *args, "--help"],
            capture_output=True, text=True, check=True, env={"COLUMNS": "120", "PATH": ""},
        ).stdout  # fmt: skip
        assert "<bool>" not in page and "--help" in page, page
    assert "{CHECKPOINT}" in page and "{checkpoint}" not in page, page


#: The commands without --progress, and why: the rest can run for more than a few seconds.
QUICK_OR_SERVING = {
    "plan": "simulates a schedule in Python (seconds at most); prints one table",
    "llm route": "routes a few queries with a fitted router (about a second)",
    "llm export-log": "copies a database's decision rows to a file (seconds); prints the count",
    "serve": "a server: it logs requests, it has no end to show progress towards",
    "llm serve": "a server: it logs requests, it has no end to show progress towards",
}


def test_every_command_that_takes_a_while_shows_progress() -> None:
    """A new command gets --progress (a bar, or `options.status`) or a reason here."""
    for name, cmd in COMMANDS.items():
        flags = {flag for param in cmd.params for flag in param.opts}
        assert ("--progress" in flags) != (name in QUICK_OR_SERVING), name


def test_demo_fast_has_its_own_default_folder(
    tmp_path: typing.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make demo` then `dynroute demo --fast`: no clash with the full demo's runs/demo."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)  # the full demo's folder, left alone
    result = runner.invoke(
        app, ["demo", "--fast", "--steps", "2", "--no-analysis", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "demo-fast" / "results.json").is_file()
    assert not any((tmp_path / "runs" / "demo").iterdir())
