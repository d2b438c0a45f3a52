"""Atomic checkpoints: a crash or SIGKILL at any moment leaves the previous one intact.

A run folder holds::

    run.json          the RunConfig (a rerun with a different config is refused)
    checkpoint.pt     model + optimizer + step + data-sampler and torch RNG states
    model/            the latest weights as a transformers folder (from_pretrained-able),
                      self-contained: tokenizer, corpus settings, step, evaluation set
    metrics.jsonl     one JSON object per logged step / evaluation

``checkpoint.pt`` is the source of truth for resuming; it is written to a temporary
file in the same folder, fsynced and ``os.replace``-d into place, which is atomic on
POSIX. ``model/`` is written the same way as a whole folder (every file fsynced, then
two renames), so a crash at any moment leaves either the old or the new export. When
``checkpoint.pt`` is damaged all the same (a disk error, a copy cut short), the run can
continue from ``model/`` (:func:`resume_state` with ``from_model=True``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynroute.checkpoints import (
    DATA_FILE,
    EVAL_WINDOWS_FILE,
    RUN_INFO_FILE,
    CorruptFileError,
    read_json,
)
from dynroute.common.files import atomic_folder

__all__ = [
    "CHECKPOINT_NAME",
    "MODEL_DIR",
    "export_model",
    "load_checkpoint",
    "model_folder_files",
    "resume_state",
    "run_info_file",
]

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_DIR = "model"


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint written by ``atomic_torch_save`` (CPU tensors, full pickle).

    The checkpoint holds RNG states and plain Python values besides tensors, so
    ``weights_only`` is off: only load checkpoints you wrote yourself.

    Example:
        >>> from dynroute.common.files import atomic_torch_save
        >>> atomic_torch_save({"step": 3}, "/tmp/ckpt-doctest.pt")
        >>> load_checkpoint("/tmp/ckpt-doctest.pt")["step"]
        3
    """
    return torch.load(path, map_location="cpu", weights_only=False)


def export_model(
    model: Any, folder: Path | str, extra: Mapping[str, str | bytes] | None = None
) -> Path:
    """Write ``model.save_pretrained`` output to ``folder`` without a half-written state.

    The new folder is written next to the old one, fsynced, and swapped in with two
    renames; ``extra`` maps file names to text or bytes written into the folder too
    (tokenizer, data config, ...: :func:`model_folder_files`).

    Returns:
        Path: ``folder``.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is on screen
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*"):  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        for name, content in (extra or {}).items():
            raw = content.encode("utf-8") if isinstance(content, str) else content
            (tmp / name).write_bytes(raw)
    return folder


def model_folder_files(
    data_config: Mapping[str, Any], prepared: Any, train: Any
) -> dict[str, bytes]:
    """What makes an exported ``model/`` folder self-contained, by file name.

    The tokenizer as transformers saves it (``tokenizer.json``, ``tokenizer_config.json``,
    ``special_tokens_map.json``: ``AutoTokenizer.from_pretrained(model_dir)`` loads it),
    the corpus settings (``dynroute_data.json``) and the evaluation set the training
    loop scores (``eval_windows.npy``, ids ``[n, seq_len + 1]``).

    Args:
        data_config: the run's ``[data]`` table; prepared: its ``PreparedData``;
        train: its ``TrainConfig`` (seq_len, batch_size, eval_batches).
    """
    import io

    from dynroute.data import as_hf_tokenizer, eval_windows

    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        as_hf_tokenizer(prepared.tokenizer).save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            files[path.name] = path.read_bytes()
    files[DATA_FILE] = json.dumps(dict(data_config), indent=2).encode()
    limit = None if train.eval_batches is None else train.eval_batches * train.batch_size
    buf = io.BytesIO()
    np.save(buf, eval_windows(prepared.val_tokens, train.seq_len, limit))
    files[EVAL_WINDOWS_FILE] = buf.getvalue()
    return files


def run_info_file(
    step: int, tokens: int, train: Any, training_compute: Mapping[str, Any] | None = None
) -> dict[str, bytes]:
    """``dynroute_run.json``: the step of the exported weights, the evaluation shapes and
    the experts training activated (``training_compute``:
    :meth:`~dynroute.train.compute.TrainingCompute.to_dict`).

    Example:
        >>> from dynroute.train.config import TrainConfig
        >>> json.loads(run_info_file(40, 2560, TrainConfig())["dynroute_run.json"])["step"]
        40
    """
    info = {
        "step": step,
        "tokens": tokens,
        "seq_len": train.seq_len,
        "batch_size": train.batch_size,
        "eval_batches": train.eval_batches,
    }
    if training_compute is not None:
        info["training_compute"] = dict(training_compute)
    return {RUN_INFO_FILE: json.dumps(info, indent=2).encode()}


def _exported_step(out_dir: Path) -> int | None:
    """The step of the intact export in ``out_dir/model`` (None: none, or unreadable)."""
    folder = out_dir / MODEL_DIR
    try:
        info = read_json(folder / RUN_INFO_FILE)
        from safetensors.torch import load_file

        load_file(folder / "model.safetensors")
    except Exception:  # missing, damaged or from an older version: not a fallback
        return None
    return int(info["step"])


def resume_state(out_dir: Path | str, from_model: bool = False) -> dict[str, Any] | None:
    """What a rerun of ``dynroute train`` continues from (None: a fresh start).

    ``checkpoint.pt`` normally. ``from_model``: the weights and step of ``model/`` (a
    fresh optimizer, data sampler reseeded at that step), for a run whose
    ``checkpoint.pt`` is damaged.

    Raises:
        CorruptFileError: one line naming the damaged file, what is intact, what to do.
    """
    out_dir = Path(out_dir)
    ckpt = out_dir / CHECKPOINT_NAME
    if from_model:
        step = _exported_step(out_dir)
        if step is None:
            raise CorruptFileError(
                f"--restart-from-model: {out_dir / MODEL_DIR} holds no intact export with its "
                f"step ({RUN_INFO_FILE}); delete {out_dir} and train again"
            )
        from transformers.utils import logging as hf_logging

        from dynroute.checkpoints import model_class

        hf_logging.disable_progress_bar()  # ours is the one on screen
        config = read_json(out_dir / MODEL_DIR / "config.json")
        model = model_class(config.get("model_type")).from_pretrained(out_dir / MODEL_DIR)
        weights = model.state_dict()  # tied weights included, unlike the file
        info = read_json(out_dir / MODEL_DIR / RUN_INFO_FILE)
        return {"model": weights, "step": step, "tokens": int(info["tokens"]), "from_model": True,
                "training_compute": info.get("training_compute")}  # fmt: skip
    if not ckpt.is_file():
        return None
    try:
        return load_checkpoint(ckpt)
    except Exception as err:  # RuntimeError, UnpicklingError, EOFError, ... from torch
        step = _exported_step(out_dir)
        intact = (
            f"{out_dir / MODEL_DIR} from step {step} is intact: rerun with --restart-from-model "
            f"to continue from it (fresh optimizer state), or delete {out_dir} to start over"
            if step is not None
            else f"no intact model/ export to fall back on: delete {out_dir} and train again"
        )
        raise CorruptFileError(f"{ckpt} is corrupt ({type(err).__name__}); {intact}") from None
