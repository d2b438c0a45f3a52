"""The training recipe: AdamW, warmup + cosine, clipping, evals, atomic checkpoints, resume.

One engine for every model family (DynMoE; adaptive and LoRA models through
:class:`~dynroute.train.hooks.TrainHooks`). :func:`train` reads top to bottom like a
script (torchtune-style recipe): start (data, model, optimizer), resume, evaluate at
step 0, the steps, the final evaluation. Resuming restores the model, the optimizer, the
step, the data sampler's generator and torch's RNG, so a run killed at any moment and
restarted with the same command produces the same loss curve as one never interrupted.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from dynroute.common.files import atomic_torch_save
from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from dynroute.parallel import TrainingRanks
from dynroute.train.blocks import checkpoint_blocks, compile_blocks
from dynroute.train.checkpoint import (
    CHECKPOINT_NAME,
    MODEL_DIR,
    export_model,
    model_folder_files,
    resume_state,
    run_info_file,
)
from dynroute.train.compute import TrainingCompute
from dynroute.train.config import RunTables
from dynroute.train.data import load_data
from dynroute.train.device import autocast, fused_adamw_supported, resolve_device, to_cpu
from dynroute.train.evaluate import evaluate_model
from dynroute.train.hooks import StepOutput, TrainHooks, moe_progress_text
from dynroute.train.interrupt import TrainingInterrupted, steps_started, stop_requested
from dynroute.train.metrics import MetricsLog, read_metrics
from dynroute.train.progress import progress_bar
from dynroute.train.quick import cap_steps, max_steps_from_env
from dynroute.train.runfolder import RUN_FILE, ConfigMismatchError, check_run_folder
from dynroute.train.schedule import lr_at

__all__ = ["RUN_FILE", "ConfigMismatchError", "TrainResult", "train"]


@dataclass
class TrainResult:
    """Summary of a finished (or stopped) run.

    Attributes:
        out_dir: the run folder; steps: steps completed; tokens: training tokens seen;
        resumed_from: step the run resumed at (0 = fresh); final: last evaluation
        metrics (None if stopped early); seconds: wall time of this invocation;
        training_compute: the experts the run activated while it trained
        (:class:`~dynroute.train.compute.TrainingCompute`: the sum over steps of each
        layer's measured k̄, resumes included).
    """

    out_dir: Path
    steps: int
    tokens: int
    resumed_from: int
    final: dict[str, Any] | None
    seconds: float
    training_compute: TrainingCompute | None = None


def train(
    cfg: RunTables,
    out_dir: Path | str,
    progress: bool = True,
    label: str = "train",
    stop_after: int | None = None,
    expert_parallel: int = 1,
    hooks: TrainHooks | None = None,
    nproc: int = 1,
    restart_from_model: bool = False,
) -> TrainResult:
    """Train (or resume) a model into ``out_dir``: DynMoE, or another family through hooks.

    Args:
        cfg: the run configuration (a :class:`~dynroute.train.RunConfig`; another
            family's config with ``train``, ``to_dict`` and hooks that read the rest).
        out_dir: run folder; if it holds a checkpoint of the same config the run resumes.
        progress: show a rich progress bar (loss, tokens/s, experts per token) on stderr.
        label: text in front of the progress bar.
        stop_after: stop (after checkpointing) once this many steps are done; for tests.
        expert_parallel: N > 1 when this process is one of N torchrun ranks that each
            hold num_experts / N experts (``dynroute train --expert-parallel N`` starts
            them); the dense parameters are data-parallel (DDP) over the same ranks.
        hooks: what another model family changes in this recipe (data, model, loss,
            evaluation, checkpoint contents, export, ...); see
            :class:`~dynroute.train.hooks.TrainHooks`.
        nproc: N > 1 when this process is one of N data-parallel torchrun ranks
            (``dynroute train --nproc N``): DDP or FSDP2 (``cfg.train.parallel``).
            Under either, each rank trains on ``batch_size`` rows per micro-batch: the
            global batch of a step (``nproc · grad_accum · batch_size`` rows) is drawn
            from one generator on every rank and each rank takes its slice, so a run
            on N processes sees exactly the batches of one process with N times the
            batch. Rank 0 logs and writes the (unsharded, CPU) checkpoint.
        restart_from_model: continue from the weights and step of ``out_dir/model``
            (fresh optimizer) when ``checkpoint.pt`` is damaged.

    Returns:
        TrainResult.

    Raises:
        TrainingInterrupted: Ctrl-C inside :func:`~dynroute.train.interrupt.stop_on_sigint`
            (after the step in flight and a checkpoint).

    Example:
        >>> train(load_config("configs/tiny.toml"), "runs/tiny")  # doctest: +SKIP

    ``DYNROUTE_MAX_STEPS=N`` in the environment trains at most N steps (a complete short
    run; :mod:`dynroute.train.quick`) and says so once on stderr.
    """
    started = time.perf_counter()
    cfg, note = cap_steps(cfg, max_steps_from_env())
    if note and int(os.environ.get("RANK", "0")) == 0:
        Console(stderr=True).print(note, markup=False, highlight=False)
    run = _start(cfg, Path(out_dir), hooks or TrainHooks(), expert_parallel, nproc)
    resumed_from = _resume(run, restart_from_model)
    if run.step == 0 and cfg.train.eval_interval:
        _evaluate(run)
    _train_steps(run, progress, label, stop_after)
    final = _finish(run) if run.step >= cfg.train.steps else None
    seconds = time.perf_counter() - started
    compute = _training_compute(run)
    return TrainResult(run.out_dir, run.step, run.tokens, resumed_from, final, seconds, compute)


@dataclass
class _Run:
    """What one run holds while it trains."""

    cfg: Any
    out_dir: Path
    hooks: TrainHooks
    device: torch.device
    ranks: TrainingRanks
    data: Any
    model: nn.Module
    run_model: nn.Module  # the model, or its DDP / expert-parallel wrapper
    optimizer: torch.optim.Optimizer
    sampler: torch.Generator  # draws the batches; its state is checkpointed
    rows: int  # rows of a step's global batch
    step: int = 0
    tokens: int = 0
    log: MetricsLog | None = None  # rank 0 only
    # Σ over steps of each layer's k̄ on this rank (device: no host sync per step), the
    # steps it counts and the rank-mean sums restored from the checkpoint
    expert_sums: torch.Tensor | float = 0.0
    sums_from: int = 0  # the step this invocation's expert_sums start at
    counted: TrainingCompute = field(default_factory=TrainingCompute)
    export_files: dict[str, bytes] = field(default_factory=dict)


def _start(cfg: Any, out_dir: Path, hooks: TrainHooks, expert_parallel: int, nproc: int) -> _Run:
    """Device, ranks, data, model and optimizer of a fresh start (same seed, same bits)."""
    t = cfg.train
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(t.device, local_rank)  # fails before a folder is touched
    ranks = TrainingRanks.from_env(
        expert_parallel, nproc, t.parallel, "nccl" if device.type == "cuda" else "gloo",
        t.ep_schedule,
    )  # fmt: skip
    # run.json is written once data and model are known good
    check_run_folder(out_dir, cfg.to_dict(), write=False, identity=hooks.run_identity)
    if not ranks.is_main:
        ranks.barrier()  # rank 0 fills the data cache first
    data = hooks.load_data(cfg) if hooks.load_data is not None else load_data(cfg.data)
    if ranks.is_main:
        ranks.barrier()
    torch.manual_seed(t.seed)
    model = _build_model(cfg, hooks, data.vocab_size, max(t.seq_len, 16))
    if t.activation_checkpointing:
        checkpoint_blocks(model)
    if t.compile:
        compile_blocks(model)
    model.to(device)
    run_model = ranks.wrap(model, t.seq_len, t.batch_size)  # N > 1: experts sharded, DDP/FSDP
    optimizer = _optimizer(model, t, device)  # after wrap: FSDP replaces the parameters
    # One generator, same on every rank: each draws the step's global batch, takes its rows.
    sampler = torch.Generator().manual_seed(t.seed + 1)
    rows = t.batch_size * t.grad_accum * ranks.world_size
    run = _Run(cfg, out_dir, hooks, device, ranks, data, model, run_model, optimizer, sampler, rows)
    if hooks.export is None:  # what makes model/ self-contained: tokenizer, eval windows
        run.export_files = model_folder_files(dataclasses.asdict(cfg.data), data, t)
    return run


def _build_model(cfg: Any, hooks: TrainHooks, vocab_size: int, max_seq_len: int) -> nn.Module:
    if hooks.build_model is not None:
        return hooks.build_model(cfg, vocab_size, max_seq_len)
    config = DynMoEConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, **cfg.model)
    return DynMoEForCausalLM(config)  # identical on every rank (same seed)


def _optimizer(model: nn.Module, t: Any, device: torch.device) -> torch.optim.AdamW:
    # The parameters that train (requires_grad); decay matrices only, norms (1-D) are
    # left alone, as in nanoGPT.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        fused=fused_adamw_supported(device) or None,
    )


def _resume(run: _Run, restart_from_model: bool) -> int:
    """Load the folder's checkpoint (if any), write ``run.json``, open the metrics; the step
    resumed from."""
    state = resume_state(run.out_dir, from_model=restart_from_model)
    if run.ranks.is_main:
        check_run_folder(run.out_dir, run.cfg.to_dict(), identity=run.hooks.run_identity)
    if state is not None:
        _load_state(run, state)
    if run.step and run.ranks.is_main:
        Console(stderr=True).print(f"resuming from step {run.step}")
    if run.ranks.is_main:
        run.log = MetricsLog(run.out_dir / "metrics.jsonl", resume_step=run.step)
    return run.step


def _load_state(run: _Run, state: dict[str, Any]) -> None:
    t, ranks = run.cfg.train, run.ranks
    if state.get("from_model"):  # weights and step only
        _load_model_state(run, state["model"])
        run.sampler.manual_seed(t.seed + 1 + 7919 * state["step"])  # same on every rank
    else:
        samplers = state.get("sampler_rngs", [state["sampler_rng"]])
        if len(samplers) != ranks.world_size:
            raise ConfigMismatchError(
                f"{run.out_dir / CHECKPOINT_NAME} was written by {len(samplers)} process(es); "
                f"resume it with --nproc {len(samplers)} (or --expert-parallel "
                f"{len(samplers)}), or use a new --out folder"
            )
        _load_model_state(run, state["model"])
        ranks.load_optimizer_state(run.optimizer, run.model, state["optimizer"])
        run.sampler.set_state(samplers[ranks.rank])
        torch.set_rng_state(state["torch_rng"])
    run.step, run.tokens = state["step"], state["tokens"]
    # A checkpoint from before the count was kept: the count starts here (steps_counted
    # says how many steps it covers).
    run.counted = TrainingCompute.from_dict(state.get("training_compute"))
    run.sums_from = run.step


def _load_model_state(run: _Run, state: dict[str, torch.Tensor]) -> None:
    if not run.hooks.trainable_only:
        run.ranks.load_model_state(run.model, state)
        return
    trained = {n for n, p in run.model.named_parameters() if p.requires_grad}
    if set(state) != trained:
        raise ConfigMismatchError(
            f"{run.out_dir / CHECKPOINT_NAME} holds other trained parameters than this model "
            f"({len(set(state) ^ trained)} differ); use a new --out folder"
        )
    run.model.load_state_dict(state, strict=False)  # the frozen rest is build_model's


def _train_steps(run: _Run, progress: bool, label: str, stop_after: int | None) -> None:
    """Steps until the last (or ``stop_after``, or Ctrl-C): log, evaluate and checkpoint on
    their intervals."""
    t = run.cfg.train
    run.model.train()
    window_tokens, window_start = 0, time.perf_counter()
    stats = ""
    steps_started()  # Ctrl-C from here on: finish the step, checkpoint, stop
    with progress_bar(progress and run.ranks.is_main, t.steps, run.step, label) as update:
        while run.step < t.steps:
            lr, done = _step(run)
            window_tokens += run.rows * t.seq_len
            if run.step % t.log_interval == 0 or run.step == t.steps:
                elapsed = time.perf_counter() - window_start
                row = _log_step(run, lr, done, window_tokens / max(elapsed, 1e-9))
                stats = (run.hooks.progress_text or moe_progress_text)(row)
                window_tokens, window_start = 0, time.perf_counter()
            if t.eval_interval and run.step % t.eval_interval == 0 and run.step < t.steps:
                _evaluate(run)
            if run.step % t.checkpoint_interval == 0 and run.step < t.steps:
                _checkpoint(run)
            if update is not None:
                update(run.step, stats)
            if stop_after is not None and run.step >= stop_after and run.step < t.steps:
                _checkpoint(run)
                break
            if stop_requested() and run.step < t.steps and run.ranks.world_size == 1:  # Ctrl-C
                _checkpoint(run)
                raise TrainingInterrupted(run.step)


@dataclass
class _StepDone:
    """What a step leaves for its log line (device tensors: no host sync until logged)."""

    totals: torch.Tensor  # loss, lm_loss, aux_loss summed over micro-batches
    experts: torch.Tensor | float  # experts per layer summed over micro-batches
    grad_norm: torch.Tensor
    output: Any  # the last micro-batch's output (for hooks.log_extra)


def _step(run: _Run) -> tuple[float, _StepDone]:
    """One optimizer step over ``grad_accum`` micro-batches; returns its learning rate."""
    t, ranks, hooks = run.cfg.train, run.ranks, run.hooks
    lr = lr_at(run.step, t.lr, t.min_lr, t.warmup_steps, t.steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    xs, ys = run.data.train.batch(run.rows, t.seq_len, generator=run.sampler)
    if hooks.before_step is not None:
        hooks.before_step(run.model, run.step, t.steps)
    run.optimizer.zero_grad(set_to_none=True)
    totals = torch.zeros(3, device=run.device)  # loss, lm_loss, aux_loss (no host sync)
    experts: torch.Tensor | float = 0.0
    for micro in range(t.grad_accum):
        lo = (micro * ranks.world_size + ranks.rank) * t.batch_size
        x = xs[lo : lo + t.batch_size].to(run.device, non_blocking=True)
        y = ys[lo : lo + t.batch_size].to(run.device, non_blocking=True)
        with ranks.gradient_sync(run.run_model, sync=micro == t.grad_accum - 1):
            with autocast(run.device, t.dtype):
                out = _forward(run, x, y)
            # Mean over micro-batches: the gradient of the whole step's mean loss.
            (out.loss / t.grad_accum).backward()
        totals += torch.stack([out.loss, out.lm_loss, out.aux_loss]).detach().float()
        experts = experts + out.experts_per_layer
    ranks.finish_gradient_sync(run.run_model)
    # the step's k̄ per layer, summed over steps: the experts training paid for
    step_kbar = torch.as_tensor(experts, device=run.device).detach().reshape(-1) / t.grad_accum
    run.expert_sums = run.expert_sums + step_kbar.to(_sum_dtype(run.device))
    grad_norm = (
        ranks.clip_grad_norm_(run.model, t.grad_clip) if t.grad_clip > 0 else torch.tensor(0.0)
    )
    run.optimizer.step()
    run.step += 1
    if hooks.after_step is not None:
        hooks.after_step(run.model, run.step, t.steps)  # stateful routers: controllers, ...
    run.tokens += run.rows * t.seq_len
    return lr, _StepDone(totals, experts, grad_norm, out)


def _forward(run: _Run, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
    if run.hooks.compute_loss is not None:
        return run.hooks.compute_loss(run.run_model, x, y)
    return run.run_model(x, labels=y)  # type: ignore[no-any-return]


def _sum_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps a million steps' sum exact to ~1e-10; MPS has no float64
    return torch.float32 if device.type == "mps" else torch.float64


def _local_sums(run: _Run) -> list[float]:
    """This rank's Σ over the steps since the (re)start of each layer's k̄ (one host sync)."""
    sums = run.expert_sums
    return [float(v) for v in sums.tolist()] if isinstance(sums, torch.Tensor) else []


def _training_compute(run: _Run) -> TrainingCompute:
    """The run's expert steps so far: restored sums plus this invocation's, rank-mean
    (a collective: every rank calls it)."""
    sums = _local_sums(run)
    return run.counted.plus(run.ranks.mean(sums) if sums else [], run.step - run.sums_from)


def _log_step(run: _Run, lr: float, done: _StepDone, tokens_per_second: float) -> dict[str, Any]:
    """The step's ``train`` row (means over micro-batches and ranks), written on rank 0."""
    t = run.cfg.train
    # Means over ranks (each rank saw its own batch); a no-op on one process.
    local = (done.totals / t.grad_accum).tolist()
    experts = torch.as_tensor(done.experts, dtype=torch.float32) / t.grad_accum
    sums = _local_sums(run)
    loss, lm_loss, aux_loss, *rest = run.ranks.mean([*local, *experts.tolist(), *sums])
    per_layer, sums = rest[: len(rest) - len(sums)], rest[len(rest) - len(sums) :]
    compute = run.counted.plus(sums, run.step - run.sums_from)
    row = {
        "kind": "train",
        "step": run.step,
        "tokens": run.tokens,
        "loss": loss,
        "lm_loss": lm_loss,
        "aux_loss": aux_loss,
        "lr": lr,
        "grad_norm": float(done.grad_norm),
        "mean_experts_per_token": sum(per_layer) / max(len(per_layer), 1),
        "experts_per_layer": per_layer,
        "tokens_per_second": tokens_per_second,
        **compute.metrics(),
    }
    if run.hooks.log_extra is not None:
        row.update(run.hooks.log_extra(run.model, done.output))
    if run.log is not None:
        run.log.write(row)
    return row


def _evaluate(run: _Run) -> dict[str, Any]:
    """One validation pass, logged as an ``eval`` row. Every rank evaluates the same
    batches (its expert shard serves all of them)."""
    t = run.cfg.train
    with autocast(run.device, t.dtype):
        if run.hooks.evaluate is not None:
            result = run.hooks.evaluate(run.model, run.data, t)
        else:
            val = run.data.val_tokens
            result = evaluate_model(run.model, val, t.batch_size, t.seq_len, t.eval_batches)
    row = {"kind": "eval", "step": run.step, "tokens": run.tokens, **result}
    if run.log is not None:
        run.log.write(row)
    return row


def _checkpoint(run: _Run) -> None:
    """Write ``checkpoint.pt`` atomically, then the export (rank 0; collectives on all)."""
    ranks, model = run.ranks, run.model
    # Under expert parallelism these gather the shards (collectives on every rank), so
    # the file is the same as a one-process run's and rank 0 alone writes it.
    # CPU tensors only: a checkpoint loads on any device (and under any dtype).
    if run.hooks.trainable_only:
        model_state = to_cpu({n: p for n, p in model.named_parameters() if p.requires_grad})
    else:
        model_state = to_cpu(ranks.model_state(model))
    optimizer_state = to_cpu(ranks.optimizer_state(run.optimizer, model))
    samplers = ranks.gather(run.sampler.get_state())
    compute = _training_compute(run)  # a collective too
    if ranks.is_main:
        atomic_torch_save(
            {
                "model": model_state,
                "optimizer": optimizer_state,
                "sampler_rng": samplers[0],
                "sampler_rngs": samplers,
                "torch_rng": torch.get_rng_state(),
                "step": run.step,
                "tokens": run.tokens,
                "model_config": _config_dict(model),
                "run_config": run.cfg.to_dict(),
                "training_compute": compute.to_dict(),
            },
            run.out_dir / CHECKPOINT_NAME,
        )
        _export(run, model_state, compute)
    ranks.barrier()


def _config_dict(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else None


def _export(run: _Run, model_state: dict[str, torch.Tensor], compute: TrainingCompute) -> None:
    if run.hooks.export is not None:
        run.hooks.export(run.model, run.out_dir)
        return
    t, model = run.cfg.train, run.model
    if run.ranks.ctx is not None:  # a CPU copy of the gathered weights
        model = type(model)(model.config)
        model.load_state_dict(model_state)
    files = {**run.export_files, **run_info_file(run.step, run.tokens, t, compute.to_dict())}
    export_model(model, run.out_dir / MODEL_DIR, files)


def _finish(run: _Run) -> dict[str, Any] | None:
    """The final evaluation (reused when this step's is logged already) and checkpoint."""
    t = run.cfg.train
    rows = read_metrics(run.out_dir / "metrics.jsonl", "eval")
    last = [r for r in rows if r.get("step") == t.steps]
    # Rank 0's file decides, so every rank agrees on whether to evaluate (a collective).
    evaluated = run.ranks.gather(bool(last))[0]
    final = (last[-1] if last else None) if evaluated else _evaluate(run)
    _checkpoint(run)
    return final
