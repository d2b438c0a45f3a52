"""The training recipe: AdamW, warmup + cosine, clipping, evals, atomic checkpoints, resume.

Reads like a script on purpose (torchtune-style recipe). Resuming restores the model,
the optimizer, the step, the data sampler's generator and torch's RNG, so a run killed
at any moment and restarted with the same command produces the same loss curve as one
that was never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dynroute.checkpoints import read_json
from dynroute.common.files import atomic_torch_save, atomic_write_text
from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from dynroute.parallel import TrainingRanks
from dynroute.routing.state import step_routers
from dynroute.train.blocks import checkpoint_blocks, compile_blocks
from dynroute.train.checkpoint import (
    CHECKPOINT_NAME,
    MODEL_DIR,
    export_model,
    model_folder_files,
    resume_state,
    run_info_file,
)
from dynroute.train.config import RESOURCE_KEYS, RunConfig, TrainConfig
from dynroute.train.data import load_data
from dynroute.train.device import autocast, fused_adamw_supported, resolve_device, to_cpu
from dynroute.train.evaluate import evaluate_model
from dynroute.train.hooks import TrainHooks
from dynroute.train.interrupt import TrainingInterrupted, steps_started, stop_requested
from dynroute.train.metrics import MetricsLog
from dynroute.train.schedule import lr_at

__all__ = ["RUN_FILE", "ConfigMismatchError", "TrainResult", "train"]

RUN_FILE = "run.json"


class ConfigMismatchError(ValueError):
    """The output folder holds a run with a different configuration."""


@dataclass
class TrainResult:
    """Summary of a finished (or stopped) run.

    Attributes:
        out_dir: the run folder; steps: steps completed; tokens: training tokens seen;
        resumed_from: step the run resumed at (0 = fresh); final: last evaluation
        metrics (None if stopped early); seconds: wall time of this invocation.
    """

    out_dir: Path
    steps: int
    tokens: int
    resumed_from: int
    final: dict[str, Any] | None
    seconds: float


def _optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    # Decay matrices only; norms (1-D) are left alone, as in nanoGPT.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    t = cfg.train
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        fused=fused_adamw_supported(device) or None,
    )


def _check_run_folder(out_dir: Path, cfg: RunConfig, write: bool = True) -> None:
    """Write run.json (when ``write``), or check that an existing one describes the same run."""
    run_file = out_dir / RUN_FILE
    mine = cfg.to_dict()
    # A folder with no checkpoint and no export holds no training to protect (e.g. a
    # start that failed): a corrected command may take it over.
    started = (out_dir / CHECKPOINT_NAME).is_file() or (out_dir / MODEL_DIR).is_dir()
    if run_file.is_file() and started:
        hint = "delete it and rerun the same command: it is rewritten from the config"
        theirs = read_json(run_file, hint)
        # Resource settings (threads, device, dtype, ...) are not part of what the run is;
        # settings added since an older run.json was written take their defaults.
        theirs.setdefault("train", {})
        for key, value in dataclasses.asdict(TrainConfig()).items():
            theirs["train"].setdefault(key, value)
        for raw in (mine, theirs):
            for key in RESOURCE_KEYS:
                raw.get("train", {}).pop(key, None)
        if theirs != mine:
            diff = [
                f"{table}.{key}: {theirs.get(table, {}).get(key)!r} -> {value!r}"
                for table, values in mine.items()
                for key, value in values.items()
                if theirs.get(table, {}).get(key) != value
            ]
            diff += [
                f"{table}.{key}: {value!r} -> (unset)"
                for table, values in theirs.items()
                for key, value in values.items()
                if key not in mine.get(table, {})
            ]
            raise ConfigMismatchError(
                f"{out_dir} already holds a run with a different configuration "
                f"({'; '.join(diff)}); use a new --out folder, or delete {out_dir} to start over"
            )
    elif write:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_file, json.dumps(mine, indent=2))


@contextlib.contextmanager
def _progress(enabled: bool, total: int, done: int, label: str) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with progress:
        task = progress.add_task(label, total=total, completed=done, stats="")
        yield lambda n, stats: progress.update(task, completed=n, stats=stats)


def train(
    cfg: RunConfig,
    out_dir: Path | str,
    progress: bool = True,
    label: str = "train",
    stop_after: int | None = None,
    expert_parallel: int = 1,
    hooks: TrainHooks | None = None,
    nproc: int = 1,
    restart_from_model: bool = False,
) -> TrainResult:
    """Train (or resume) a DynMoE language model into ``out_dir``.

    Args:
        cfg: the run configuration.
        out_dir: run folder; if it holds a checkpoint of the same config the run resumes.
        progress: show a rich progress bar (loss, tokens/s, experts per token) on stderr.
        label: text in front of the progress bar.
        stop_after: stop (after checkpointing) once this many steps are done; for tests.
        expert_parallel: N > 1 when this process is one of N torchrun ranks that each
            hold num_experts / N experts (``dynroute train --expert-parallel N`` starts
            them); the dense parameters are data-parallel (DDP) over the same ranks.
        nproc: N > 1 when this process is one of N data-parallel torchrun ranks
            (``dynroute train --nproc N``): DDP or FSDP2 (``cfg.train.parallel``).
            Under either, each rank trains on ``batch_size`` rows per micro-batch: the
            global batch of a step (``nproc · grad_accum · batch_size`` rows) is drawn
            from one generator on every rank and each rank takes its slice, so a run
            on N processes sees exactly the batches of one process with N times the
            batch. Rank 0 logs and writes the (unsharded, CPU) checkpoint.
        hooks: what another model family changes in this recipe (its model, a per-step
            setting such as a temperature, extra logged metrics); see
            :class:`~dynroute.train.hooks.TrainHooks`.
        restart_from_model: continue from the weights and step of ``out_dir/model``
            (fresh optimizer) when ``checkpoint.pt`` is damaged.

    Returns:
        TrainResult.

    Example:
        >>> train(load_config("configs/tiny.toml"), "runs/tiny")  # doctest: +SKIP
    """
    started = time.perf_counter()
    t = cfg.train
    out_dir = Path(out_dir)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(t.device, local_rank)  # fails before a folder is touched
    ranks = TrainingRanks.from_env(
        expert_parallel, nproc, t.parallel, backend="nccl" if device.type == "cuda" else "gloo"
    )
    _check_run_folder(out_dir, cfg, write=False)  # written once data and model are known good

    if not ranks.is_main:
        ranks.barrier()  # rank 0 fills the data cache first
    data = load_data(cfg.data)
    if ranks.is_main:
        ranks.barrier()
    hooks = hooks or TrainHooks()
    torch.manual_seed(t.seed)
    if hooks.build_model is not None:
        model = hooks.build_model(cfg, data.vocab_size, max(t.seq_len, 16))
        model_cfg = model.config
    else:
        model_cfg = DynMoEConfig(
            vocab_size=data.vocab_size, max_seq_len=max(t.seq_len, 16), **cfg.model
        )
        model = DynMoEForCausalLM(model_cfg)  # identical on every rank (same seed) ...
    if t.activation_checkpointing:
        checkpoint_blocks(model)
    if t.compile:
        compile_blocks(model)
    model.to(device)
    run_model = ranks.wrap(model)  # ... then experts sharded, DDP/FSDP for the rest (N > 1)
    optimizer = _optimizer(model, cfg, device)
    # One generator, same on every rank: each draws the step's global batch, takes its rows.
    sampler = torch.Generator().manual_seed(t.seed + 1)
    rows = t.batch_size * t.grad_accum * ranks.world_size

    step, tokens_seen = 0, 0
    ckpt_path = out_dir / CHECKPOINT_NAME
    state = resume_state(out_dir, from_model=restart_from_model)
    if ranks.is_main:
        _check_run_folder(out_dir, cfg)
    if state is not None and state.get("from_model"):  # weights and step only
        ranks.load_model_state(model, state["model"])
        sampler.manual_seed(t.seed + 1 + 7919 * state["step"])  # same on every rank
        step, tokens_seen = state["step"], state["tokens"]
    elif state is not None:
        samplers = state.get("sampler_rngs", [state["sampler_rng"]])
        if len(samplers) != ranks.world_size:
            raise ConfigMismatchError(
                f"{ckpt_path} was written by {len(samplers)} process(es); resume it with "
                f"--nproc {len(samplers)} (or --expert-parallel {len(samplers)}), or use a "
                "new --out folder"
            )
        ranks.load_model_state(model, state["model"])
        ranks.load_optimizer_state(optimizer, model, state["optimizer"])
        sampler.set_state(samplers[ranks.rank])
        torch.set_rng_state(state["torch_rng"])
        step, tokens_seen = state["step"], state["tokens"]
    resumed_from = step
    if step and ranks.is_main:
        Console(stderr=True).print(f"resuming from step {step}")
    log = MetricsLog(out_dir / "metrics.jsonl", resume_step=step) if ranks.is_main else None
    export_extra = model_folder_files(dataclasses.asdict(cfg.data), data, t)

    def checkpoint() -> None:
        # Under expert parallelism these gather the shards (collectives on every rank), so
        # the file is the same as a one-process run's and rank 0 alone writes it.
        # CPU tensors only: a checkpoint loads on any device (and under any dtype).
        model_state = to_cpu(ranks.model_state(model))
        optimizer_state = to_cpu(ranks.optimizer_state(optimizer, model))
        samplers = ranks.gather(sampler.get_state())
        if ranks.is_main:
            atomic_torch_save(
                {
                    "model": model_state,
                    "optimizer": optimizer_state,
                    "sampler_rng": samplers[0],
                    "sampler_rngs": samplers,
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "tokens": tokens_seen,
                    "model_config": model_cfg.to_dict(),
                    "run_config": cfg.to_dict(),
                },
                ckpt_path,
            )
            extra = {**export_extra, **run_info_file(step, tokens_seen, t)}
            export_model(
                _unsharded(model, model_cfg, model_state, ranks.ctx is not None),
                out_dir / MODEL_DIR,
                extra,
            )
        ranks.barrier()

    def evaluate() -> dict[str, Any]:
        # Every rank evaluates the same batches (its expert shard serves all of them).
        with autocast(device, t.dtype):
            result = evaluate_model(model, data.val_tokens, t.batch_size, t.seq_len, t.eval_batches)
        row = {"kind": "eval", "step": step, "tokens": tokens_seen, **result}
        if log is not None:
            log.write(row)
        return row

    if step == 0 and t.eval_interval:
        evaluate()

    final: dict[str, Any] | None = None
    model.train()
    window_tokens, window_start = 0, time.perf_counter()
    stats = ""
    steps_started()  # Ctrl-C from here on: finish the step, checkpoint, stop
    with _progress(progress and ranks.is_main, t.steps, step, label) as update:
        while step < t.steps:
            lr = lr_at(step, t.lr, t.min_lr, t.warmup_steps, t.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            xs, ys = data.train.batch(rows, t.seq_len, generator=sampler)
            if hooks.before_step is not None:
                hooks.before_step(model, step, t.steps)
            optimizer.zero_grad(set_to_none=True)
            totals = torch.zeros(3, device=device)  # loss, lm_loss, aux_loss (no host sync)
            per_layer_sum: torch.Tensor | float = 0.0
            for micro in range(t.grad_accum):
                lo = (micro * ranks.world_size + ranks.rank) * t.batch_size
                x = xs[lo : lo + t.batch_size].to(device, non_blocking=True)
                y = ys[lo : lo + t.batch_size].to(device, non_blocking=True)
                with ranks.gradient_sync(run_model, sync=micro == t.grad_accum - 1):
                    with autocast(device, t.dtype):
                        out = run_model(x, labels=y)
                    # Mean over micro-batches: the gradient of the whole step's mean loss.
                    (out.loss / t.grad_accum).backward()
                totals += torch.stack([out.loss, out.lm_loss, out.aux_loss]).detach().float()
                per_layer_sum = per_layer_sum + out.experts_per_layer
            grad_norm = (
                ranks.clip_grad_norm_(model, t.grad_clip) if t.grad_clip > 0 else torch.tensor(0.0)
            )
            optimizer.step()
            step += 1
            step_routers(model, step, t.steps)  # stateful routers: controllers, schedules
            tokens_seen += rows * t.seq_len
            window_tokens += rows * t.seq_len

            if step % t.log_interval == 0 or step == t.steps:
                elapsed = time.perf_counter() - window_start
                # Means over ranks (each rank saw its own batch); a no-op on one process.
                local = (totals / t.grad_accum).tolist()
                experts = torch.as_tensor(per_layer_sum, dtype=torch.float32) / t.grad_accum
                loss, lm_loss, aux_loss, *per_layer = ranks.mean([*local, *experts.tolist()])
                row = {
                    "kind": "train",
                    "step": step,
                    "tokens": tokens_seen,
                    "loss": loss,
                    "lm_loss": lm_loss,
                    "aux_loss": aux_loss,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "mean_experts_per_token": sum(per_layer) / max(len(per_layer), 1),
                    "experts_per_layer": per_layer,
                    "tokens_per_second": window_tokens / max(elapsed, 1e-9),
                }
                if hooks.log_extra is not None:
                    row.update(hooks.log_extra(model, out))
                if log is not None:
                    log.write(row)
                stats = (
                    f"loss {row['lm_loss']:.3f}  {row['tokens_per_second']:,.0f} tok/s  "
                    f"{row['mean_experts_per_token']:.2f} experts/token"
                )
                window_tokens, window_start = 0, time.perf_counter()
            if t.eval_interval and step % t.eval_interval == 0 and step < t.steps:
                evaluate()
            if step % t.checkpoint_interval == 0 and step < t.steps:
                checkpoint()
            if update is not None:
                update(step, stats)
            if stop_after is not None and step >= stop_after and step < t.steps:
                checkpoint()
                break
            if stop_requested() and step < t.steps and ranks.world_size == 1:  # Ctrl-C
                checkpoint()
                raise TrainingInterrupted(step)

    if step >= t.steps:
        last = [
            r for r in _read_rows(out_dir) if r.get("kind") == "eval" and r.get("step") == t.steps
        ]
        # Rank 0's file decides, so every rank agrees on whether to evaluate (a collective).
        evaluated = ranks.gather(bool(last))[0]
        final = (last[-1] if last else None) if evaluated else evaluate()
        checkpoint()
    return TrainResult(
        out_dir, step, tokens_seen, resumed_from, final, time.perf_counter() - started
    )


def _unsharded(model: Any, model_cfg: Any, state: dict[str, Any], parallel: bool) -> Any:
    """The model to export: itself on one process, a CPU copy of the gathered weights else."""
    if not parallel:
        return model
    full = type(model)(model_cfg)
    full.load_state_dict(state)
    return full


def _read_rows(out_dir: Path) -> list[dict[str, Any]]:
    from dynroute.train.metrics import read_metrics

    return read_metrics(out_dir / "metrics.jsonl")
