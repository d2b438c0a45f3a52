"""A LoRA-experts run config: ``[lora]``, ``[data]`` and ``[train]`` tables of a TOML file.

``configs/lora_tiny.toml`` is one. Command-line flags override the file through
:func:`dynroute.train.apply_overrides`, as for every run config.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynroute.routing import make_router, parse_router
from dynroute.train import TrainConfig

__all__ = ["LoRAConfig", "LoRADataConfig", "LoRARunConfig", "load_lora_config"]


@dataclass
class LoRAConfig:
    """What to add: ``add_lora_experts`` arguments.

    Attributes:
        targets: linear-name suffixes; num_experts: E; rank: r; alpha: scale numerator;
        router: ``"name:key=value"`` or ``{"name": ..., ...}``; kind: ``"lora"`` | ``"smora"``
        | ``"peft"`` (one plain LoRA through ``peft.get_peft_model``, the reference; E and
        the router are unused, ``adapters/`` is a peft adapter folder).
    """

    targets: list[str] = field(default_factory=lambda: ["qkv", "proj"])
    num_experts: int = 4
    rank: int = 4
    alpha: float = 8.0
    router: Any = "top_k:k=2"
    kind: str = "lora"


@dataclass
class LoRADataConfig:
    """Which domains: ``"builtin"`` (``lora_domains``) or a folder of domain folders.

    Attributes:
        source; domains: train on these only (None: all; an oracle run names one);
        eval_domains: evaluate on these (None: the training domains);
        max_train_bytes, max_val_bytes: per-domain caps;
        domain_column, text_column: columns of a saved ``datasets`` folder as source.
    """

    source: str = "builtin"
    domains: list[str] | None = None
    eval_domains: list[str] | None = None
    max_train_bytes: int | None = 200_000
    max_val_bytes: int | None = 20_000
    domain_column: str = "domain"
    text_column: str = "text"


_TABLES = {"lora": LoRAConfig, "data": LoRADataConfig, "train": TrainConfig}


@dataclass
class LoRARunConfig:
    """A ``[lora]``, ``[data]``, ``[train]`` TOML file (``configs/lora_tiny.toml``)."""

    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: LoRADataConfig = field(default_factory=LoRADataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], origin: str = "config") -> LoRARunConfig:
        """Build from tables; unknown tables or keys raise naming ``origin``.

        Example:
            >>> LoRARunConfig.from_dict({"lora": {"rank": 2}}).lora.rank
            2
        """
        unknown = set(raw) - set(_TABLES)
        if unknown:
            raise ValueError(f"{origin}: unknown table(s) {sorted(unknown)}; use [lora], "
                             "[data], [train]")  # fmt: skip
        parts = {}
        for name, kind in _TABLES.items():
            values = dict(raw.get(name, {}))
            names = {f.name for f in dataclasses.fields(kind)}
            bad = set(values) - names
            if bad:
                raise ValueError(
                    f"{origin} [{name}]: unknown key(s) {sorted(bad)}; accepted: {sorted(names)}"
                )
            try:
                parts[name] = kind(**values)
            except ValueError as err:
                raise ValueError(f"{origin} [{name}]: {err}") from None
        cfg = cls(**parts)
        try:  # a wrong router fails here, before a run folder is touched
            cfg.router_spec()
        except (TypeError, ValueError) as err:
            raise ValueError(f"{origin} [lora]: {err}") from None
        return cfg

    def router_spec(self) -> dict[str, Any]:
        """The router as ``{"name": ..., **params}`` (validated).

        Example:
            >>> LoRARunConfig().router_spec()
            {'name': 'top_k', 'k': 2, 'normalize': True}
        """
        r = self.lora.router
        spec = parse_router(r) if isinstance(r, str) else dict(r)
        return make_router(spec).to_dict()  # type: ignore[union-attr]

    def to_dict(self) -> dict[str, Any]:
        """The tables as plain JSON-serialisable dicts (round-trip through :meth:`from_dict`)."""
        return {k: dataclasses.asdict(getattr(self, k)) for k in _TABLES}

    def table_keys(self) -> dict[str, set[str]]:
        """The keys each table accepts (what :func:`~dynroute.train.apply_overrides` reads).

        Example:
            >>> sorted(LoRARunConfig().table_keys())
            ['data', 'lora', 'train']
        """
        return {name: {f.name for f in dataclasses.fields(kind)} for name, kind in _TABLES.items()}

    def with_tables(self, raw: dict[str, Any], origin: str) -> LoRARunConfig:
        """A LoRA config from ``raw`` tables (checked as a file is)."""
        return LoRARunConfig.from_dict(raw, origin)


def load_lora_config(path: Path | str) -> LoRARunConfig:
    """Read a LoRA run config (TOML), with errors that name the file.

    Example:
        >>> load_lora_config("configs/lora_tiny.toml").lora.kind  # doctest: +SKIP
        'lora'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path} not found; pass --config with a TOML file such as "
            "configs/lora_tiny.toml"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: invalid TOML: {err}") from err
    return LoRARunConfig.from_dict(raw, origin=str(path))
