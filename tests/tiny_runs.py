"""Tiny ``dynroute train`` runs for the tests: a corpus of stdlib source, a run config TOML
with the sizes a test needs, and the real CLI in a subprocess (seconds each).

A test writes only what differs from the tiny defaults (``MODEL``, ``DATA``, ``TRAIN``); a
key set to ``None`` is left out of the file (the config's own default applies)::

    config = tiny_run(tmp_path, train={"steps": 12})  # tmp_path/corpus.txt, tmp_path/tiny.toml

>>> print(config_text("c.txt", model={"router": {"name": "top_k", "k": 1}, "d_ff": None},
...                   train={"steps": 3, "eval_batches": None}))
[model]
d_model = 32
n_layers = 2
n_heads = 2
num_experts = 4
router = {name = "top_k", k = 1}
<BLANKLINE>
[data]
source = "c.txt"
vocab_size = 320
<BLANKLINE>
[train]
steps = 3
batch_size = 4
seq_len = 32
warmup_steps = 2
log_interval = 2
eval_interval = 4
checkpoint_interval = 4
threads = 1
<BLANKLINE>
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])

#: Real Python text for a corpus: two stdlib modules (~25 KB).
SOURCES = ("textwrap.py", "shlex.py")
#: ~120 KB of stdlib source: enough windows for the training-recipe tests.
RECIPE_SOURCES = (*SOURCES, "fnmatch.py", "glob.py", "bisect.py", "heapq.py")

#: ``[model]``: 2 layers of 4 experts, d_model 32.
MODEL: dict[str, object] = {
    "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 32, "num_experts": 4,
}  # fmt: skip
#: ``[data]`` beside ``source``.
DATA: dict[str, object] = {"vocab_size": 320}
#: ``[train]``: 8 steps of 4 × 32 tokens, evaluated and checkpointed every 4, one thread.
TRAIN: dict[str, object] = {
    "steps": 8, "batch_size": 4, "seq_len": 32, "warmup_steps": 2, "log_interval": 2,
    "eval_interval": 4, "eval_batches": 2, "checkpoint_interval": 4, "threads": 1,
}  # fmt: skip

#: The CLI tests' run: 12 steps, evaluated and checkpointed every 6.
CLI_TRAIN: dict[str, object] = {"steps": 12, "eval_interval": 6, "checkpoint_interval": 6}

#: The smallest run that trains, checkpoints and saves: 3 steps of 2 × 16 tokens, with
#: ``SMOKE_DATA``'s vocabulary.
SMOKE_TRAIN: dict[str, object] = {
    "steps": 3, "batch_size": 2, "seq_len": 16, "warmup_steps": 1, "log_interval": 1,
    "eval_interval": 0, "eval_batches": 1, "checkpoint_interval": 3,
}  # fmt: skip
SMOKE_DATA: dict[str, object] = {"vocab_size": 300}

#: A frontier sweep's runs: the per-expert layout, 2 steps, no evaluation while training.
FRONTIER_MODEL: dict[str, object] = {"expert_layout": "per_expert"}
FRONTIER_TRAIN: dict[str, object] = {
    "steps": 2, "warmup_steps": 1, "log_interval": 1, "eval_interval": 0, "checkpoint_interval": 2,
}  # fmt: skip

#: The training-recipe tests' run: top-p at 0.4, 30 steps, evaluated every 10.
RECIPE_MODEL: dict[str, object] = {"router": "top_p:p=0.4"}
RECIPE_TRAIN: dict[str, object] = {
    "steps": 30, "warmup_steps": 3, "log_interval": 1, "eval_interval": 10,
    "checkpoint_interval": 5,
}  # fmt: skip

Table = Mapping[str, object] | None


def stdlib_corpus(path: Path, sources: Sequence[str] = SOURCES) -> Path:
    """Write the stdlib modules ``sources`` to ``path``, joined by newlines; return ``path``."""
    text = "\n".join((STDLIB / name).read_text(encoding="utf-8") for name in sources)
    path.write_text(text, encoding="utf-8")
    return path


def toml_value(value: object) -> str:
    """A TOML literal: strings and numbers as JSON writes them, a mapping as an inline table.

    >>> toml_value({"name": "ext_threshold", "tau": 0.2}), toml_value(True), toml_value(1e-2)
    ('{name = "ext_threshold", tau = 0.2}', 'true', '0.01')
    """
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def merged(defaults: Mapping[str, object], overrides: Table) -> dict[str, object]:
    """``defaults`` updated by ``overrides`` (a default keeps its place); ``None`` drops a key.

    >>> merged({"a": 1, "b": 2}, {"b": None, "c": 3, "a": 0})
    {'a': 0, 'c': 3}
    """
    return {k: v for k, v in {**defaults, **(overrides or {})}.items() if v is not None}


def config_text(
    corpus: Path | str, model: Table = None, data: Table = None, train: Table = None
) -> str:
    """The run config TOML: ``MODEL``, ``DATA`` (source = ``corpus``), ``TRAIN``, overridden."""
    tables = {
        "model": merged(MODEL, model),
        "data": merged({"source": str(corpus), **DATA}, data),
        "train": merged(TRAIN, train),
    }
    return "\n".join(
        f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
        for name, table in tables.items()
    )


def write_config(
    path: Path, corpus: Path | str, model: Table = None, data: Table = None, train: Table = None
) -> Path:
    """Write :func:`config_text` to ``path``; return ``path``."""
    path.write_text(config_text(corpus, model, data, train), encoding="utf-8")
    return path


def tiny_run(
    folder: Path,
    sources: Sequence[str] = SOURCES,
    *,
    config: str = "tiny.toml",
    model: Table = None,
    data: Table = None,
    train: Table = None,
) -> Path:
    """``folder/corpus.txt`` from the stdlib ``sources`` and ``folder/<config>`` training on
    it (tables as in :func:`config_text`); return the config's path."""
    corpus = stdlib_corpus(folder / "corpus.txt", sources)
    return write_config(folder / config, corpus, model, data, train)


def recipe_run(folder: Path, steps: int = 30, model: Table = None, **train: object) -> Path:
    """The training-recipe tests' run in ``folder`` (``RECIPE_*``, ``test.toml``): ``steps``
    steps, ``model`` keys added to ``[model]``, ``train`` keys overriding ``[train]``."""
    return tiny_run(
        folder,
        RECIPE_SOURCES,
        config="test.toml",
        model={**RECIPE_MODEL, **(model or {})},
        train={**RECIPE_TRAIN, "steps": steps, **train},
    )


def cli_env(
    *paths: Path | str, cache: Path | None = None, plugins: str | None = None
) -> dict[str, str]:
    """This process's environment for a CLI subprocess: ``PYTHONPATH`` = ``paths`` and then
    this interpreter's ``sys.path`` (it imports what the tests import), ``DYNROUTE_CACHE`` =
    ``cache`` where given, ``DYNROUTE_PLUGINS`` = ``plugins`` (unset where ``None``)."""
    env = {k: v for k, v in os.environ.items() if k != "DYNROUTE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), *sys.path])
    if cache is not None:
        env["DYNROUTE_CACHE"] = str(cache)
    if plugins:
        env["DYNROUTE_PLUGINS"] = plugins
    return env


def run_cli(
    *args: str | Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """The real ``dynroute`` CLI in a fresh interpreter (what a user runs), output captured."""
    cmd = [sys.executable, "-m", "dynroute.cli", *map(str, args)]
    return subprocess.run(
        cmd, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
