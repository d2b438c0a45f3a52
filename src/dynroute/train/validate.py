"""Check a run's settings before anything is written or computed (well under a second).

``dynroute train`` calls :func:`check_run_config` right after reading the config and the
flags, and :func:`check_corpus` before the tokenizer is trained, so a bad value is one
line on the terminal and an untouched ``--out`` folder, not a traceback minutes later or
a ``run.json`` that refuses the corrected command.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path

from dynroute.train.config import RunConfig

__all__ = ["check_corpus", "check_probability", "check_run_config"]

_BINARY_SNIFF_BYTES = 8192


def check_probability(value: float | None, name: str) -> None:
    """A threshold in (0, 1] (top-p's p), or None.

    Example:
        >>> check_probability(1.5, "--p")
        Traceback (most recent call last):
        ValueError: --p must be in (0, 1], got 1.5
    """
    if value is not None and not (0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value}")


def _check_train(cfg: RunConfig, origin: str, flags: Collection[str]) -> None:
    t = cfg.train

    def where(name: str) -> str:
        return f"--{name.replace('_', '-')}" if name in flags else f"{origin} [train] {name}"

    positive = ("steps", "batch_size", "seq_len", "log_interval", "checkpoint_interval")
    for name in positive:
        value = getattr(t, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where(name)} must be a positive integer, got {value!r}")
    for name in ("eval_interval", "warmup_steps", "threads"):
        value = getattr(t, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where(name)} must be an integer >= 0, got {value!r}")
    if t.eval_batches is not None and (not isinstance(t.eval_batches, int) or t.eval_batches < 1):
        raise ValueError(
            f"{origin} [train] eval_batches must be a positive integer (or unset for the "
            f"whole validation split), got {t.eval_batches!r}"
        )
    for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
        value = getattr(t, name)
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{where(name)} must be a number >= 0, got {value!r}")
    for name in ("beta1", "beta2"):
        value = getattr(t, name)
        if not isinstance(value, int | float) or not (0.0 <= value < 1.0):
            raise ValueError(f"{where(name)} must be in [0, 1), got {value!r}")


def _check_model(cfg: RunConfig, origin: str, flags: Collection[str]) -> None:
    """Build the model config and route a few random tokens through the router the way
    its layer will (state, context; training and evaluation): the router's own checks run,
    for every registered router."""
    from dynroute.models import DynMoEConfig
    from dynroute.routing import check_router

    model = dict(cfg.model)
    check_probability(model.get("p"), "--p" if "p" in flags else f"{origin} [model] p")
    try:
        config = DynMoEConfig(vocab_size=cfg.data.vocab_size, **model)
        check_router(config.router_spec(), config.num_experts, config.d_model)
    except (TypeError, ValueError) as err:
        given = [f"--{name}" for name in ("router", "k", "p") if name in flags]
        raise ValueError(f"{'/'.join(given) or origin + ' [model]'}: {err}") from None


def check_run_config(
    cfg: RunConfig,
    origin: str = "config",
    flags: Collection[str] = (),
    model_check: bool = True,
) -> None:
    """Raise ``ValueError`` (one line: the value, where it came from, what is allowed).

    Args:
        cfg: the config with the command-line flags applied.
        origin: the config file's name, for the message.
        flags: the settings given as command-line flags (named as ``--flag`` then).
        model_check: also build the model config and run its router once (skip for
            model families other than DynMoE).

    Example:
        >>> from dynroute.train.config import apply_overrides
        >>> check_run_config(apply_overrides(RunConfig(), steps=-5))
        Traceback (most recent call last):
        ValueError: config [train] steps must be a positive integer, got -5
    """
    _check_train(cfg, origin, flags)
    if cfg.data.vocab_size < 257:
        raise ValueError(
            f"{origin} [data] vocab_size must be >= 257 (256 bytes + end of text), "
            f"got {cfg.data.vocab_size}"
        )
    if model_check:
        _check_model(cfg, origin, flags)


def check_corpus(source: str | Path | None) -> None:
    """A corpus path exists and holds text (a folder: some text file; a file: UTF-8 text).

    Cheap: reads at most the first 8 KiB of one file (a folder's deep checks happen when
    it is read).

    Example:
        >>> check_corpus("/nonexistent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        FileNotFoundError: corpus path /nonexistent does not exist; pass an existing text file, ...
    """
    if source in (None, "", "stdlib"):
        return
    path = Path(source)  # type: ignore[arg-type]
    if not path.exists():
        raise FileNotFoundError(
            f"corpus path {path} does not exist; pass an existing text file, a folder of "
            "text files, or a saved datasets folder (or leave --data out for the built-in "
            "corpus)"
        )
    if path.is_file():
        with path.open("rb") as fh:
            head = fh.read(_BINARY_SNIFF_BYTES)
        if not head.strip():
            raise ValueError(f"corpus file {path} is empty; pass a file with text in it")
        if b"\x00" in head:
            raise ValueError(
                f"corpus file {path} is binary, not text; pass a UTF-8 text file or a folder"
            )
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start < len(head) - 4:  # not just a character cut at the 8 KiB boundary
                raise ValueError(
                    f"corpus file {path} is not UTF-8 text; convert it to UTF-8 or pass a folder"
                ) from None
