"""A tiny config, a text folder and a CLI runner shared by the robustness tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import tiny_runs

WORDS = [
    "the",
    "router",
    "sends",
    "each",
    "token",
    "to",
    "the",
    "experts",
    "whose",
    "gate",
    "weights",
    "add",
    "up",
    "to",
    "p",
    "while",
    "harder",
    "tokens",
    "may",
    "need",
    "more",
    "of",
    "them",
    "and",
    "easy",
    "ones",
    "fewer",
]


def write_texts(folder: Path, files: int = 4, lines: int = 150) -> Path:
    """A folder of small deterministic text files (enough for train + validation)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        rows = [
            " ".join(WORDS[(f * 7 + r * 3 + w * (r % 5 + 1)) % len(WORDS)] for w in range(12))
            for r in range(lines)
        ]
        (folder / f"part{f}.txt").write_text("\n".join(rows) + "\n")
    return folder


def write_config(path: Path, corpus: Path | str, steps: int = 8) -> Path:
    """The robustness tests' run: top-p at 0.5, ``steps`` steps, 3 batches per evaluation."""
    train = {"steps": steps, "eval_batches": 3}
    return tiny_runs.write_config(path, corpus, model={"router": "top_p:p=0.5"}, train=train)


def cli(
    *args: str | Path, cache: Path, timeout: float = 600, in_process: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real ``dynroute`` CLI in a subprocess (its own data cache).

    ``in_process``: through typer's ``CliRunner`` instead (the same code without the
    ~5 s of imports a fresh interpreter pays); an exception other than the command's
    own exit is re-raised, so a traceback cannot pass unnoticed.
    """
    if in_process:
        from typer.testing import CliRunner

        from dynroute.cli import app

        old = os.environ.get("DYNROUTE_CACHE")
        os.environ["DYNROUTE_CACHE"] = str(cache)
        try:
            result = CliRunner().invoke(app, [str(a) for a in args])
        finally:
            if old is None:
                os.environ.pop("DYNROUTE_CACHE")
            else:
                os.environ["DYNROUTE_CACHE"] = old
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return subprocess.CompletedProcess(list(args), result.exit_code, result.output, "")
    env = {**os.environ, "DYNROUTE_CACHE": str(cache), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return tiny_runs.run_cli(*args, env=env, timeout=timeout)


def assert_clean_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A non-zero exit, no traceback, and each needle in the (joined) output."""
    text = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, text
    assert "Traceback" not in text and "╭─" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text
