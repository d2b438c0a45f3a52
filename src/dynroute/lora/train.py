"""The LoRA-experts recipe: a frozen base, adapters trained on a mixture of domains.

A run folder holds ``run.json`` (the config; a rerun with another config is refused),
``checkpoint.pt`` (adapters, optimizer, step, RNG states: rerun the command to resume),
``adapters/`` (:func:`~dynroute.lora.save_lora_experts` output), ``metrics.jsonl`` and
``result.json`` (per-domain validation loss, experts per token, expert usage).
The base is read with ``dynroute.checkpoints.load_model`` (any folder ``dynroute eval``
reads); checkpoints, schedule, metrics and evaluation are ``dynroute.train``'s.
"""

from __future__ import annotations

import dataclasses
import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynroute.checkpoints import load_model
from dynroute.common.files import atomic_torch_save, atomic_write_text
from dynroute.data import get_batch, iter_eval_batches
from dynroute.evaluation import evaluate_lm, logits_of
from dynroute.lora.apply import add_lora_experts, save_lora_experts, trainable_parameters
from dynroute.lora.data import load_domains
from dynroute.lora.layer import lora_aux_loss, lora_layers
from dynroute.routing import make_router, parse_router
from dynroute.train import TrainConfig, load_checkpoint, lr_at
from dynroute.train.loop import ConfigMismatchError
from dynroute.train.metrics import MetricsLog

__all__ = [
    "LoRAConfig",
    "LoRADataConfig",
    "LoRARunConfig",
    "evaluate_domains",
    "load_lora_config",
    "train_lora",
]


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
        unknown = set(raw) - {"lora", "data", "train"}
        if unknown:
            raise ValueError(f"{origin}: unknown table(s) {sorted(unknown)}; use [lora], "
                             "[data], [train]")  # fmt: skip
        parts = {}
        for name, kind in (("lora", LoRAConfig), ("data", LoRADataConfig), ("train", TrainConfig)):
            values = dict(raw.get(name, {}))
            names = {f.name for f in dataclasses.fields(kind)}
            bad = set(values) - names
            if bad:
                raise ValueError(
                    f"{origin} [{name}]: unknown key(s) {sorted(bad)}; accepted: {sorted(names)}"
                )
            parts[name] = kind(**values)
        cfg = cls(**parts)
        try:  # a wrong router fails here, before a run folder is touched
            cfg.router_spec()
        except (TypeError, ValueError) as err:
            raise ValueError(f"{origin} [lora]: {err}") from None
        return cfg

    def router_spec(self) -> dict[str, Any]:
        """The router as ``{"name": ..., **params}`` (validated)."""
        r = self.lora.router
        spec = parse_router(r) if isinstance(r, str) else dict(r)
        return make_router(spec).to_dict()  # type: ignore[union-attr]

    def to_dict(self) -> dict[str, Any]:
        return {k: dataclasses.asdict(getattr(self, k)) for k in ("lora", "data", "train")}


def load_lora_config(path: Path | str) -> LoRARunConfig:
    """Read a LoRA run config (TOML), with errors that name the file."""
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


def _encode(tokenizer: Any, docs: list[str]) -> np.ndarray:
    from dynroute.checkpoints import _encode as encode  # the loader's own (dynroute or HF)

    return encode(tokenizer, docs)


@torch.no_grad()
def evaluate_domains(
    model: nn.Module,
    val: dict[str, np.ndarray],
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Per domain: validation loss, mean experts per token and each expert's share.

    Experts per token and usage are averaged over the wrapped linears (all have E).

    Returns:
        ``{domain: {"loss", "tokens", "experts_per_token", "expert_share": [E]}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    layers = list(lora_layers(model).values())
    for name, tokens in val.items():
        stats = {"assignments": 0.0, "tokens": 0, "counts": None}

        def record(_output: Any, _losses: torch.Tensor, stats: dict = stats) -> None:
            for layer in layers:
                r = layer.last_routing
                if r is None:
                    continue
                stats["assignments"] += r.num_assignments / len(layers)
                counts = r.expert_counts().double()
                stats["counts"] = counts if stats["counts"] is None else stats["counts"] + counts
            stats["tokens"] += _losses.numel()

        batches = iter_eval_batches(tokens, batch_size, seq_len, max_batches)
        result = evaluate_lm(model, batches, after_batch=record)
        counts = stats["counts"]
        share = (counts / counts.sum()).tolist() if counts is not None and counts.sum() else []
        out[name] = {
            "loss": result.loss,
            "tokens": result.tokens,
            "experts_per_token": stats["assignments"] / max(stats["tokens"], 1),
            "expert_share": share,
        }
    return out


def _check_run_folder(out: Path, cfg: LoRARunConfig, base: Path) -> None:
    mine = {**cfg.to_dict(), "base": str(base.resolve())}
    run_file = out / "run.json"
    if run_file.is_file():
        theirs = json.loads(run_file.read_text(encoding="utf-8"))
        for raw in (mine, theirs):  # a resource setting, not part of what the run is
            raw.get("train", {}).pop("threads", None)
        if theirs != mine:
            diff = [
                f"{t}.{k}" for t, v in mine.items() if isinstance(v, dict)
                for k in v if theirs.get(t, {}).get(k) != v[k]
            ] + [k for k in ("base",) if theirs.get(k) != mine[k]]  # fmt: skip
            raise ConfigMismatchError(
                f"{out} already holds a LoRA run with a different configuration "
                f"({', '.join(diff)} differ); use a new --out folder, or delete {out}"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_file, json.dumps(mine, indent=2))


def train_lora(
    cfg: LoRARunConfig,
    base: Path | str,
    out: Path | str,
    progress: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train LoRA experts on ``base`` (frozen) into ``out``; rerun to resume.

    Args:
        cfg: the run config; base: a model folder ``load_model`` reads (e.g. the --out of
            ``dynroute train``); out: run folder; progress: print a line per log interval;
        stop_after: checkpoint and stop after this many steps (tests).

    Returns:
        ``result.json``'s content: per-domain evaluation, trainable parameters, steps.
    """
    started = time.perf_counter()
    t = cfg.train
    base, out = Path(base), Path(out)
    loaded = load_model(base)  # raises FileNotFoundError naming the folder
    limit = int(getattr(loaded.model.config, "max_seq_len", 0) or
                getattr(loaded.model.config, "max_position_embeddings", 10**9))  # fmt: skip
    if t.seq_len > limit:
        raise ValueError(f"[train] seq_len {t.seq_len} exceeds the base model's limit {limit}; "
                         "lower seq_len in the config")  # fmt: skip
    _check_run_folder(out, cfg, base)
    d = cfg.data
    names = sorted(set((d.domains or []) + (d.eval_domains or []))) or None
    domains = load_domains(d.source, d.max_train_bytes, d.max_val_bytes, names,
                           d.domain_column, d.text_column)  # fmt: skip
    train_names = d.domains or sorted(domains)
    eval_names = d.eval_domains or train_names
    tok = loaded.tokenizer
    train_tokens = {n: _encode(tok, domains[n]["train"]) for n in train_names}
    val_tokens = {n: _encode(tok, domains[n]["validation"]) for n in eval_names}
    for name, arr in (*train_tokens.items(), *val_tokens.items()):
        if arr.shape[0] < t.seq_len + 2:
            raise ValueError(f"domain {name!r} has {arr.shape[0]} tokens, too few for seq_len "
                             f"{t.seq_len}; raise max_*_bytes or lower seq_len")  # fmt: skip

    torch.manual_seed(t.seed)
    model = loaded.model
    lc = cfg.lora
    if lc.kind == "peft":  # the reference: one plain LoRA trained through peft
        from peft import LoraConfig, get_peft_model

        peft_config = LoraConfig(
            r=lc.rank, lora_alpha=lc.alpha, target_modules=lc.targets, lora_dropout=0.0
        )
        model = get_peft_model(model, peft_config)
    else:
        add_lora_experts(model, lc.targets, lc.num_experts, lc.rank, lc.alpha,
                         router=cfg.router_spec(), kind=lc.kind)  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay
    )
    sampler = torch.Generator().manual_seed(t.seed + 1)
    step = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["adapters"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
    resumed_from = step
    log = MetricsLog(out / "metrics.jsonl", resume_step=step)

    def checkpoint() -> None:
        adapters = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        atomic_torch_save({"adapters": adapters, "optimizer": optimizer.state_dict(),
                     "sampler_rng": sampler.get_state(), "torch_rng": torch.get_rng_state(),
                     "step": step}, ckpt)  # fmt: skip
        if lc.kind == "peft":
            model.save_pretrained(out / "adapters")  # type: ignore[operator]
        else:
            save_lora_experts(model, out / "adapters")

    model.train()
    per = [t.batch_size // len(train_names) + (i < t.batch_size % len(train_names))
           for i in range(len(train_names))]  # fmt: skip
    while step < t.steps:
        lr = lr_at(step, t.lr, t.min_lr, t.warmup_steps, t.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # every batch mixes the domains in fixed shares (a domain per row group)
        pairs = [
            get_batch(train_tokens[n], b, t.seq_len, sampler)
            for n, b in zip(train_names, per, strict=True)
            if b
        ]
        x, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        logits = logits_of(model(x))
        lm_loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss = lm_loss + lora_aux_loss(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        step += 1
        if step % t.log_interval == 0 or step == t.steps:
            layers = lora_layers(model).values()
            k = [m.last_routing.mean_experts() for m in layers if m.last_routing is not None]
            row = {"kind": "train", "step": step, "loss": loss.item(), "lm_loss": lm_loss.item(),
                   "lr": lr, "mean_experts_per_token": sum(k) / max(len(k), 1)}  # fmt: skip
            log.write(row)
            if progress:
                print(f"step {step}/{t.steps}  loss {row['lm_loss']:.4f}  "
                      f"{row['mean_experts_per_token']:.2f} experts/token", flush=True)  # fmt: skip
        if step % t.checkpoint_interval == 0 and step < t.steps:
            checkpoint()
        if stop_after is not None and step >= stop_after and step < t.steps:
            checkpoint()
            return {"steps": step, "stopped": True, "resumed_from": resumed_from}
    checkpoint()
    result = {
        "steps": step,
        "resumed_from": resumed_from,
        "trainable_parameters": trainable_parameters(model),
        "router": cfg.router_spec(),
        "kind": lc.kind,
        "domains": evaluate_domains(model, val_tokens, t.batch_size, t.seq_len, t.eval_batches),
        "seconds": time.perf_counter() - started,
    }
    losses = {f"val_loss/{n}": r["loss"] for n, r in result["domains"].items()}
    log.write({"kind": "eval", "step": step, **losses})
    atomic_write_text(out / "result.json", json.dumps(result, indent=2))
    return result
