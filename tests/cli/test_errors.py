"""One error path for every command: a user error is one plain line and exit code 2.

Every registered command is run in a real subprocess (what a user runs) with a bad
input; the table below must name every command `dynroute.cli` registers, so a new
command needs its case here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from dynroute.commands.options import command, user_errors

from .test_cli_basics import COMMANDS

Result = subprocess.CompletedProcess[str]
BAD_MODEL = "[model]\nwidth = 3\n"  # an unknown key: the message names `FILE [model]`


def cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """command -> (arguments after it, text its error line must contain)."""
    nope, bad, bad_lora = str(tmp / "nope"), str(tmp / "bad.toml"), str(tmp / "lora.toml")
    no_table = ["--train", str(tmp / "nope.jsonl")]
    return {
        "demo": (["--p", "1.5", "--out", str(tmp / "demo")], "--p must be in (0, 1]"),
        "train": (["--config", bad, "--out", str(tmp / "o1")], "bad.toml [model]: unknown key"),
        "eval": ([nope], nope),
        "analyze": ([nope], nope),
        "patch": ([nope, "--router", "top_p:p=0.4"], nope),
        "serve": ([nope, "--port", "1"], nope),
        "llm export-log": (
            ["--db", "mysql://h/db", "--out", str(tmp / "x.jsonl")],
            "not a SQLite or PostgreSQL URL",
        ),
        "bench frontier": (["--config", str(tmp / "none.toml")], "none.toml"),
        "adaptive train": (
            ["--config", bad, "--out", str(tmp / "o2")],
            "bad.toml [model]: unknown key",
        ),
        "adaptive oracle": ([nope], nope),
        "adaptive report": ([nope, "--out", str(tmp / "rep")], nope),
        "lora train": (
            [nope, "--config", bad_lora, "--out", str(tmp / "o3")],
            "lora.toml [lora]: unknown key",
        ),
        "llm eval": (no_table, "nope.jsonl"),
        "llm fit": ([*no_table, "--out", str(tmp / "m")], "nope.jsonl"),
        "llm route": ([nope, "hello"], "config.json"),
        "llm report": ([*no_table, "--out", str(tmp / "rep2")], "nope.jsonl"),
        "llm serve": ([nope, "--backend", "a=http://h", "--port", "1"], nope),
        "llm update": ([nope, "--log", str(tmp / "log.jsonl"), "--out", str(tmp / "u")], nope),
        "plan": (["--layers", "0", "--d-model", "8", "--num-experts", "4"], "--layers"),
        "profile": (["--procs", "1", "--out", str(tmp / "p.json")], "--procs must be >= 2"),
        "lora library build": (
            [nope, "--config", bad_lora, "--out", str(tmp / "lib")],
            "lora.toml [lora]: unknown key",
        ),
        "lora library eval": ([nope], nope),
        "posthoc": ([nope], nope),
        "llm add-model": (
            [nope, "--table", "llmrouter", "--model", "x", "--out", str(tmp / "added")],
            "config.json",
        ),
        "llm collect": (
            ["--prompts", nope, "--backend", "a=http://h", "--out", str(tmp / "t.jsonl")],
            nope,
        ),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Result]]:
    """Every case at once (each process imports torch: seconds; together they overlap)."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "bad.toml").write_text(BAD_MODEL)
    (tmp / "lora.toml").write_text("[lora]\nwidth = 3\n")
    env = {**os.environ, "COLUMNS": "200"}
    table = cases(tmp)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "dynroute.cli", *name.split(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp,
        )
        for name, (args, _) in table.items()
    }
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        done[name] = (table[name][1], Result(proc.args, proc.returncode, out, err))
    return done


def test_every_command_has_a_case(tmp_path: Path) -> None:
    assert set(cases(tmp_path)) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bad_input_is_one_line_exit_2(runs: dict[str, tuple[str, Result]], name: str) -> None:
    needle, result = runs[name]
    assert result.returncode == 2, (name, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, name
    assert needle in result.stderr, (name, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, result.stderr)


def test_brackets_in_an_error_are_printed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as stop, user_errors():
        raise ValueError("x.toml [model]: unknown key(s) ['width']")
    assert stop.value.exit_code == 2
    assert "error: x.toml [model]: unknown key(s) ['width']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "err", [FileNotFoundError("a.toml"), TypeError("top_p: unknown argument"), ImportError("m")]
)
def test_user_errors_exit_2(err: Exception, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as stop, user_errors():
        raise err
    assert stop.value.exit_code == 2 and str(err) in capsys.readouterr().err


def test_ctrl_c_exits_130_with_the_hint(capsys: pytest.CaptureFixture[str]) -> None:
    @command
    def long_job() -> None:
        with user_errors(interrupted="interrupted; rerun the same command to resume"):
            raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as stop:
        long_job()
    assert stop.value.exit_code == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_training_interrupted_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    from dynroute.train.interrupt import TrainingInterrupted

    with pytest.raises(typer.Exit) as stop, user_errors():
        raise TrainingInterrupted(12)
    assert stop.value.exit_code == 130
    assert "interrupted at step 12; rerun the same command" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback() -> None:
    with pytest.raises(ZeroDivisionError), user_errors():
        raise ZeroDivisionError("a bug, not a user error")


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["analyze", "runs/x", "--capacity-factor", "-1"], "--capacity-factor must be >= 0"),
        (
            ["adaptive", "train", "--config", str(REPO / "configs" / "adaptive_tiny.toml"),
             "--out", "ad", "--routing", "router", "--routers-only"],
            "--routers-only",
        ),
    ],
    ids=["capacity-factor", "routers-only-without-init-from"],
)  # fmt: skip
def test_values_that_mean_nothing_are_refused(tmp_path: Path, args: list[str], needle: str) -> None:
    """Issue 28 item 5: accepted before, now one line, exit 2, nothing written."""
    done = subprocess.run(
        [sys.executable, "-m", "dynroute.cli", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())
