"""A tiny corpus and config for end-to-end frontier runs (seconds each)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

TINY = """
[model]
d_model = 32
n_layers = 2
n_heads = 2
d_ff = 32
num_experts = 4
expert_layout = "per_expert"

[data]
source = "{corpus}"
vocab_size = 320

[train]
steps = 2
batch_size = 4
seq_len = 32
warmup_steps = 1
log_interval = 1
eval_interval = 0
eval_batches = 2
checkpoint_interval = 2
threads = 1
"""


@pytest.fixture
def tiny_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DYNROUTE_CACHE", str(tmp_path / "cache"))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join((stdlib / n).read_text() for n in ("textwrap.py", "shlex.py")))
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(corpus=corpus))
    return path


def dynroute(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess (what a user runs)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    return subprocess.run(
        [sys.executable, "-m", "dynroute.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )
