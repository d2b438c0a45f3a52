"""Shared fixtures of the adaptive tests: a tiny config on a stdlib corpus, a private cache."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch

CONFIG = """
[model]
d_model = 32
n_layers = 2
n_heads = 2
d_ff = 64
small_ratio = 8
routing = "random"

[data]
source = "{corpus}"
vocab_size = 320

[train]
steps = 8
batch_size = 4
seq_len = 32
warmup_steps = 2
log_interval = 2
eval_interval = 4
eval_batches = 2
checkpoint_interval = 4
threads = 1
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("adaptive")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join((stdlib / n).read_text() for n in ("textwrap.py", "shlex.py")))
    path = tmp / "tiny.toml"
    path.write_text(CONFIG.format(corpus=corpus))
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNROUTE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
