"""``DYNROUTE_MAX_STEPS=N``: try any documented command in seconds (every family, one cap).

The one training engine reads the variable, so ``dynroute train``, ``demo``, ``bench
frontier``, ``lora train`` and ``adaptive train`` all honour it. A capped run is a
complete short run: its learning-rate schedule, final evaluation and ``model/`` export are
those of an ``N``-step config, and ``run.json`` records ``steps = N`` (rerunning the same
command with the same cap resumes or reuses it; without the cap it is refused as a
different configuration, so a quick run is never mistaken for the real one).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_STEPS_ENV_VAR", "cap_steps", "max_steps_from_env"]

#: The environment variable that caps the optimizer steps of every training run.
MAX_STEPS_ENV_VAR = "DYNROUTE_MAX_STEPS"


def max_steps_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The cap set by ``DYNROUTE_MAX_STEPS`` (None when unset or empty).

    Example:
        >>> max_steps_from_env({"DYNROUTE_MAX_STEPS": "3"}), max_steps_from_env({})
        (3, None)
        >>> max_steps_from_env({"DYNROUTE_MAX_STEPS": "x"})
        Traceback (most recent call last):
        ValueError: DYNROUTE_MAX_STEPS='x' must be a positive integer (unset it to train every step)
    """
    raw = (os.environ if environ is None else environ).get(MAX_STEPS_ENV_VAR, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(
            f"{MAX_STEPS_ENV_VAR}={raw!r} must be a positive integer (unset it to train every step)"
        )
    return int(raw)


def cap_steps(cfg: Any, cap: int | None) -> tuple[Any, str | None]:
    """``cfg`` with ``train.steps`` lowered to ``cap``, and the note that says so.

    ``cfg`` is any run config dataclass with a ``train`` table (DynMoE, adaptive, LoRA);
    it is returned unchanged (note None) when there is no cap or the run is shorter.

    Example:
        >>> from dynroute.train.config import RunConfig, apply_overrides
        >>> cfg = apply_overrides(RunConfig(), steps=60)
        >>> capped, note = cap_steps(cfg, 3)
        >>> capped.train.steps, cfg.train.steps, note
        (3, 60, 'DYNROUTE_MAX_STEPS=3: training 3 of 60 steps')
        >>> cap_steps(cfg, 100)[1] is None
        True
    """
    if cap is None or cap >= cfg.train.steps:
        return cfg, None
    note = f"{MAX_STEPS_ENV_VAR}={cap}: training {cap} of {cfg.train.steps} steps"
    train = dataclasses.replace(cfg.train, steps=cap)
    return dataclasses.replace(cfg, train=train), note
