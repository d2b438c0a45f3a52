"""``run.json``: what a run folder trains, so that a rerun with another config is refused.

A rerun of the same command resumes; a rerun with a different configuration (other
than resource settings such as threads or the device) stops with a
:class:`ConfigMismatchError` that lists each difference.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynroute.checkpoints import read_json
from dynroute.common.files import atomic_write_text
from dynroute.train.checkpoint import CHECKPOINT_NAME, MODEL_DIR
from dynroute.train.config import RESOURCE_KEYS, TrainConfig

__all__ = ["RUN_FILE", "ConfigMismatchError", "check_run_folder"]

RUN_FILE = "run.json"


class ConfigMismatchError(ValueError):
    """The output folder holds a run with a different configuration."""


def check_run_folder(
    out_dir: Path,
    tables: dict[str, Any],
    write: bool = True,
    identity: Mapping[str, Any] | None = None,
) -> None:
    """Write ``run.json`` (when ``write``), or check that an existing one is the same run.

    Args:
        out_dir: the run folder.
        tables: the config as ``cfg.to_dict()`` (TOML tables).
        write: write ``run.json`` when it is missing or holds no started run.
        identity: more entries that define the run (e.g. ``{"base": "/abs/runs/tiny"}``).

    Raises:
        ConfigMismatchError: naming every differing ``table.key`` and what to do.

    Example:
        >>> import tempfile
        >>> from dynroute.train.config import RunConfig, apply_overrides
        >>> folder = Path(tempfile.mkdtemp())
        >>> check_run_folder(folder, RunConfig().to_dict())
        >>> (folder / "checkpoint.pt").touch()  # a started run
        >>> check_run_folder(folder, apply_overrides(RunConfig(), threads=2).to_dict())
        >>> check_run_folder(folder, apply_overrides(RunConfig(), steps=7).to_dict())
        Traceback (most recent call last):
        ...
        dynroute.train.runfolder.ConfigMismatchError: ... (train.steps: 200 -> 7); use a new ...
    """
    run_file = out_dir / RUN_FILE
    mine = {**tables, **(identity or {})}
    # A folder with no checkpoint and no export holds no training to protect (e.g. a
    # start that failed): a corrected command may take it over.
    started = (out_dir / CHECKPOINT_NAME).is_file() or (out_dir / MODEL_DIR).is_dir()
    if run_file.is_file() and started:
        hint = "delete it and rerun the same command: it is rewritten from the config"
        theirs = read_json(run_file, hint)
        diff = _differences(_comparable(theirs, fill=True), _comparable(mine))
        if diff:
            raise ConfigMismatchError(
                f"{out_dir} already holds a run with a different configuration "
                f"({'; '.join(diff)}); use a new --out folder, or delete {out_dir} to start over"
            )
    elif write:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_file, json.dumps(mine, indent=2))


def _comparable(raw: dict[str, Any], fill: bool = False) -> dict[str, Any]:
    """``raw`` without resource settings; with ``fill``, train settings added since an older
    run.json was written take their defaults."""
    raw = json.loads(json.dumps(raw))  # a deep copy
    train = raw.setdefault("train", {})
    if fill:
        for key, value in dataclasses.asdict(TrainConfig()).items():
            train.setdefault(key, value)
    for key in RESOURCE_KEYS:  # threads, device, dtype, ...: not part of what the run is
        train.pop(key, None)
    return raw


def _differences(theirs: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    """``table.key: old -> new`` for every key (or plain entry) that differs."""
    diff = []
    for name in {**theirs, **mine}:
        old, new = theirs.get(name), mine.get(name)
        if isinstance(old, dict) or isinstance(new, dict):
            old, new = old or {}, new or {}
            diff += [
                f"{name}.{key}: {old.get(key)!r} -> {new[key]!r}"
                for key in new
                if old.get(key) != new[key]
            ]
            diff += [f"{name}.{key}: {old[key]!r} -> (unset)" for key in old if key not in new]
        elif old != new:
            diff.append(f"{name}: {old!r} -> {new!r}")
    return diff
