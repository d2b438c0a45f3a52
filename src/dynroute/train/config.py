"""Run configuration: ``[model]``, ``[data]`` and ``[train]`` tables of a TOML file.

A config file looks like ``configs/tiny.toml``::

    [model]            # any DynMoEConfig field except vocab_size (taken from the tokenizer)
    d_model = 64
    router = {name = "top_p", p = 0.4}   # or: router = "top_p:p=0.4"
    [data]             # DataConfig
    source = "stdlib"
    [train]            # TrainConfig
    steps = 200

Command-line flags override the file through :func:`apply_overrides`.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dynroute.common.registry import parse_spec, spec_name

__all__ = [
    "RESOURCE_KEYS",
    "SPEC_KEYS",
    "DataConfig",
    "RunConfig",
    "RunTables",
    "TrainConfig",
    "apply_overrides",
    "load_config",
]

T = TypeVar("T", bound="RunTables")


@dataclass
class DataConfig:
    """Where the tokens come from (passed to ``dynroute.data.prepare_data``).

    Attributes:
        source: ``"stdlib"`` (built-in corpus), a text file, a folder, or a saved
            ``datasets`` folder.
        vocab_size: requested BPE vocabulary size.
        max_train_bytes: cap on the training text (None: all of it).
        max_val_bytes: cap on the validation text (None: all of it).
        text_column: text column of a saved ``datasets`` dataset.
    """

    source: str = "stdlib"
    vocab_size: int = 4096
    max_train_bytes: int | None = None
    max_val_bytes: int | None = None
    text_column: str = "text"


@dataclass
class TrainConfig:
    """Optimisation, logging and checkpointing.

    Attributes:
        steps: optimizer steps; batch_size, seq_len: tokens per step = batch_size · seq_len.
        lr: peak learning rate; min_lr: final learning rate of the cosine decay.
        warmup_steps: linear warmup from 0 to ``lr``.
        weight_decay, beta1, beta2: AdamW settings (no decay on norms and biases).
        grad_clip: max global gradient norm (0 = off).
        seed: seeds model init and data sampling.
        log_interval: steps between training-metric lines in ``metrics.jsonl``.
        eval_interval: steps between validation evaluations (0 = only at the end).
        eval_batches: validation batches per evaluation, their windows evenly spaced over
            the split and saved with the model (None: the whole split).
        checkpoint_interval: steps between atomic checkpoints.
        threads: torch CPU threads (0 = leave torch's default).
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:i"``.
        dtype: ``"float32"``, or ``"bfloat16"`` (autocast; weights and optimizer state stay
            float32).
        compile: ``torch.compile`` each transformer block.
        grad_accum: micro-batches of ``batch_size`` rows per optimizer step (gradients add up).
        activation_checkpointing: recompute each block's activations in the backward pass.
        parallel: how ``--nproc N`` shares the dense parameters: ``"ddp"`` (replicated,
            gradients all-reduced) or ``"fsdp"`` (FSDP2 ``fully_shard`` per block).
        ep_schedule: with ``--expert-parallel N``: ``"off"`` (exchange, then experts, then
            exchange back; DDP buckets) or ``"auto"`` (FSMoE's schedule: token chunks per
            layer chosen by the cost model from an online profile, a hierarchical exchange
            across nodes, the dense gradients' all-reduce in partitions). Same losses.
    """

    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    log_interval: int = 10
    eval_interval: int = 50
    eval_batches: int | None = 20
    checkpoint_interval: int = 50
    threads: int = 0
    device: str = "auto"
    dtype: str = "float32"
    compile: bool = False
    grad_accum: int = 1
    activation_checkpointing: bool = False
    parallel: str = "ddp"
    ep_schedule: str = "off"

    def __post_init__(self) -> None:
        check_train_settings(self)

    @property
    def tokens_per_step(self) -> int:
        """batch_size · seq_len · grad_accum (per process)."""
        return self.batch_size * self.seq_len * self.grad_accum


# Settings that change how a run executes, not what it computes: a resumed run may change
# them (train on a GPU in bfloat16, resume on a CPU in float32).
EP_SCHEDULES = ("off", "auto")
"""``train.ep_schedule`` / ``--ep-schedule``: today's expert-parallel path, or FSMoE's."""

RESOURCE_KEYS = (
    "threads", "device", "dtype", "compile", "activation_checkpointing", "parallel", "ep_schedule",
)  # fmt: skip


def check_train_settings(t: TrainConfig) -> None:
    """Raise a one-line ValueError naming the first bad execution setting of ``t``.

    Example:
        >>> TrainConfig(dtype="float16")
        Traceback (most recent call last):
        ...
        ValueError: dtype = 'float16': use "float32" or "bfloat16"
    """
    from dynroute.train.device import DTYPES, parse_device

    parse_device(t.device)
    if t.dtype not in DTYPES:
        raise ValueError(f"dtype = {t.dtype!r}: use " + " or ".join(f'"{d}"' for d in DTYPES))
    for name in ("compile", "activation_checkpointing"):
        if not isinstance(getattr(t, name), bool):
            raise ValueError(f"{name} = {getattr(t, name)!r}: use true or false")
    if isinstance(t.grad_accum, bool) or not isinstance(t.grad_accum, int) or t.grad_accum < 1:
        raise ValueError(f"grad_accum = {t.grad_accum!r}: use an integer >= 1")
    if t.parallel not in ("ddp", "fsdp"):
        raise ValueError(f'parallel = {t.parallel!r}: use "ddp" or "fsdp"')
    if t.ep_schedule not in EP_SCHEDULES:
        raise ValueError(
            f"ep_schedule = {t.ep_schedule!r} (--ep-schedule): use "
            + " or ".join(f'"{s}"' for s in EP_SCHEDULES)
        )


@dataclass
class RunConfig:
    """Everything that defines a training run (saved as ``run.json`` next to checkpoints).

    Example:
        >>> cfg = RunConfig.from_dict({"model": {"router": "top_p:p=0.4"}, "train": {"steps": 5}})
        >>> cfg.train.steps, cfg.model["router"], cfg.data.source
        (5, 'top_p:p=0.4', 'stdlib')
    """

    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: the config class of ``[model]`` (None: ``DynMoEConfig``); not part of what the run is
    model_config: type | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], origin: str = "config", model_config: type | None = None
    ) -> RunConfig:
        """Build from ``{"model": ..., "data": ..., "train": ...}``; unknown keys raise.

        ``model_config``: the config class whose fields ``[model]`` may set (default
        ``DynMoEConfig``; ``dynroute.adaptive`` passes its ``AdaptiveConfig``).
        """
        unknown = set(raw) - {"model", "data", "train"}
        if unknown:
            raise ValueError(
                f"{origin}: unknown table(s) {sorted(unknown)}; use [model], [data], [train]"
            )
        model = dict(raw.get("model", {}))
        _check_model_keys(model, origin, model_config)
        return cls(
            model=model,
            data=_build(DataConfig, raw.get("data", {}), f"{origin} [data]"),
            train=_build(TrainConfig, raw.get("train", {}), f"{origin} [train]"),
            model_config=model_config,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (round-trips through :meth:`from_dict`)."""
        return {
            "model": dict(self.model),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
        }

    def table_keys(self) -> dict[str, set[str]]:
        """The keys each table accepts.

        Example:
            >>> "steps" in RunConfig().table_keys()["train"]
            True
        """
        from dynroute.models import DynMoEConfig

        model = {f.name for f in dataclasses.fields(self.model_config or DynMoEConfig)}
        return {
            "model": model - {"vocab_size"},
            "data": {f.name for f in dataclasses.fields(DataConfig)},
            "train": {f.name for f in dataclasses.fields(TrainConfig)},
        }

    def with_tables(self, raw: dict[str, Any], origin: str) -> RunConfig:
        """A config of the same model family from ``raw`` tables (checked as a file is)."""
        return RunConfig.from_dict(raw, origin, self.model_config)


def _build(cls: type, values: dict[str, Any], origin: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{origin}: unknown key(s) {sorted(unknown)}; accepted: {sorted(names)}")
    try:
        return cls(**values)
    except ValueError as err:
        raise ValueError(f"{origin}: {err}") from None


def _check_model_keys(model: dict[str, Any], origin: str, model_config: type | None) -> None:
    from dynroute.models import DynMoEConfig
    from dynroute.models.config import router_fields

    cls = model_config or DynMoEConfig
    own = {f.name for f in dataclasses.fields(cls)}
    try:  # a router's parameters may stand beside it: router = "top_p" with p = 0.4
        keyword = set(router_fields(model.get("router", "top_k"))) - own
    except (TypeError, ValueError) as err:
        raise ValueError(f"{origin} [model]: {err}") from None
    unknown = set(model) - own - keyword
    if unknown:
        from transformers import PretrainedConfig

        named = own - {f.name for f in dataclasses.fields(PretrainedConfig)} - {"vocab_size"}
        raise ValueError(
            f"{origin} [model]: unknown key(s) {sorted(unknown)}; accepted: {sorted(named)}, and "
            f"the parameters of the router {spec_name(model.get('router', 'top_k'))} "
            f"({', '.join(sorted(keyword))}); a router's parameters may go in its spec: "
            'router = "top_p:p=0.4"'
        )
    if "vocab_size" in model:
        raise ValueError(
            f"{origin} [model]: vocab_size comes from the tokenizer; set [data] vocab_size instead"
        )
    try:  # every value (router, experts, sizes) as the model will see it, before any folder
        cls(**model)
    except (TypeError, ValueError) as err:
        message = re.sub(r"^\w*Config: ", "", str(err))
        raise ValueError(f"{origin} [model]: {message}") from None


def load_config(path: Path | str, model_config: type | None = None) -> RunConfig:
    """Read a TOML run config.

    Args:
        path: a ``.toml`` file with optional ``[model]``, ``[data]``, ``[train]`` tables.
        model_config: the config class of ``[model]`` (default ``DynMoEConfig``).

    Returns:
        RunConfig.

    Example:
        >>> load_config("configs/tiny.toml").train.steps > 0  # doctest: +SKIP
        True
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path} not found; "
            "pass --config with a TOML file such as configs/tiny.toml"
        )
    with path.open("rb") as fh:
        try:
            raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: invalid TOML: {err}") from err
    return RunConfig.from_dict(raw, origin=str(path), model_config=model_config)


class RunTables(Protocol):
    """A run config made of TOML tables: :class:`RunConfig`, ``dynroute.lora``'s
    ``LoRARunConfig``. What :func:`apply_overrides` and the training engine need."""

    train: TrainConfig

    def to_dict(self) -> dict[str, Any]: ...

    def table_keys(self) -> dict[str, set[str]]: ...

    def with_tables(self, raw: dict[str, Any], origin: str) -> Any: ...


#: Values of these keys are specs of a registry: ``"name:key=value,..."`` becomes a dict.
SPEC_KEYS = {"router": "top_p:p=0.4", "experts": "mlp:d_ff=64"}
#: Flags named otherwise than their key.
FLAG_ALIASES = {"data": ("data", "source")}


def apply_overrides(cfg: T, **flags: Any) -> T:
    """Copy of ``cfg`` with every non-None flag applied: the one way flags change a config.

    A flag is the name of a key of one table: the first of ``[train]``, ``[data]`` and the
    model's table (``[model]``; LoRA: ``[lora]``) that has it, so ``steps`` is ``[train]
    steps``, ``routing`` is adaptive's ``[model] routing`` and ``router`` is ``[model]
    router`` (LoRA: ``[lora] router``). ``data`` is ``[data] source``. A ``router`` or
    ``experts`` value ``"name:key=value,..."`` is stored as ``{"name": ..., key: value}``;
    a ``router`` flag replaces the whole router (the router parameters written beside
    ``router`` in the file go too). The result is checked as a config file is.

    Example:
        >>> cfg = apply_overrides(RunConfig(), router="top_p:p=0.3", steps=7, seed=None)
        >>> cfg.model, cfg.train.steps
        ({'router': {'name': 'top_p', 'p': 0.3}}, 7)
        >>> apply_overrides(RunConfig(), data="corpus.txt", dtype="bfloat16").data.source
        'corpus.txt'
        >>> apply_overrides(RunConfig(), k=2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: apply_overrides: unknown flag 'k': no [train] or [data] or [model] key ...
    """
    raw = cfg.to_dict()
    tables = cfg.table_keys()
    for name, value in flags.items():
        if value is None:
            continue
        table, key = FLAG_ALIASES.get(name) or (_table_of(name, tables), name)
        if key in SPEC_KEYS and isinstance(value, str) and ":" in value:
            value = parse_spec(value, key, SPEC_KEYS[key])
        if (table, key) == ("model", "router"):  # the flag's spec is the whole router:
            for param in set(raw["model"]) - tables["model"]:  # the file's router = "top_p",
                del raw["model"][param]  # p = 0.4 goes (else p would override the flag)
        raw[table][key] = value
    return cfg.with_tables(raw, "the command-line flags")


def _table_of(key: str, tables: dict[str, set[str]]) -> str:
    order = ["train", "data", *(t for t in tables if t not in ("train", "data"))]
    for table in order:
        if key in tables.get(table, ()):
            return table
    names = " or ".join(f"[{t}]" for t in order)
    raise TypeError(
        f"apply_overrides: unknown flag {key!r}: no {names} key has that name (a router's "
        'parameters go in its spec: router="top_k:k=2")'
    )
