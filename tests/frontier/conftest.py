"""A tiny corpus and config for end-to-end frontier runs (seconds each)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tiny_runs import FRONTIER_MODEL, FRONTIER_TRAIN, run_cli, tiny_run


@pytest.fixture
def tiny_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DYNROUTE_CACHE", str(tmp_path / "cache"))
    return tiny_run(tmp_path, model=FRONTIER_MODEL, train=FRONTIER_TRAIN)


def dynroute(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess (what a user runs)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    return run_cli(*args, env=env, cwd=cwd)
