"""`dynroute train`: train (or resume) a small MoE language model from a TOML config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from dynroute.commands import options

RANK = 10

DType = Annotated[
    str | None, typer.Option(help="float32 | bfloat16 (autocast; weights stay float32).")
]
Compile = Annotated[
    bool | None, typer.Option("--compile/--no-compile", help="torch.compile each block.")
]
GradAccum = Annotated[int | None, typer.Option(help="Micro-batches per optimizer step.")]
ActivationCheckpointing = Annotated[
    bool | None,
    typer.Option(
        "--activation-checkpointing/--no-activation-checkpointing",
        help="Recompute each block's activations in the backward pass.",
    ),
]
ExpertParallel = Annotated[
    int,
    typer.Option(
        "--expert-parallel",
        min=1,
        help="Run N CPU processes (torchrun, gloo) that each hold num_experts/N experts of "
        "every MoE layer and train on their own batches.",
    ),
]
Nproc = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Data-parallel processes on this machine (torchrun underneath; gloo on CPU, "
        "NCCL on GPU); each trains on batch_size rows per micro-batch.",
    ),
]
Fsdp = Annotated[
    bool | None,
    typer.Option("--fsdp/--ddp", help="With --nproc: FSDP2 (fully_shard) instead of DDP."),
]
EpSchedule = Annotated[
    str | None,
    typer.Option(
        "--ep-schedule",
        help="With --expert-parallel: 'off' (exchange, experts, exchange back) or 'auto' "
        "(token chunks per layer from an online profile so exchanges overlap the experts, "
        "hierarchical across nodes, partitioned gradient all-reduce); same losses.",
    ),
]
Nnodes = Annotated[int | None, typer.Option(help="torchrun: machines in the job (multi-node).")]
NodeRank = Annotated[int | None, typer.Option(help="torchrun: this machine's index, 0..nnodes-1.")]
MasterAddr = Annotated[
    str | None, typer.Option(help="torchrun: address of the node with node-rank 0.")
]
MasterPort = Annotated[int | None, typer.Option(help="torchrun: free TCP port on that node.")]
RestartFromModel = Annotated[
    bool,
    typer.Option(
        "--restart-from-model",
        help="Continue from the weights and step of OUT/model (fresh optimizer state) when "
        "OUT/checkpoint.pt is damaged.",
    ),
]
RESUME = (
    "interrupted; rerun the same command to resume (from the last checkpoint, if one was written)"
)


@options.command
def train(
    config: options.Config,
    out: options.RunFolder,
    data: options.Corpus = None,
    router: options.Router = None,
    experts: options.Experts = None,
    steps: options.Steps = None,
    seed: options.Seed = None,
    threads: options.Threads = None,
    progress: options.Progress = True,
    device: options.Device = None,
    dtype: DType = None,
    compile: Compile = None,
    grad_accum: GradAccum = None,
    activation_checkpointing: ActivationCheckpointing = None,
    nproc: Nproc = 1,
    expert_parallel: ExpertParallel = 1,
    fsdp: Fsdp = None,
    ep_schedule: EpSchedule = None,
    nnodes: Nnodes = None,
    node_rank: NodeRank = None,
    master_addr: MasterAddr = None,
    master_port: MasterPort = None,
    restart_from_model: RestartFromModel = False,
) -> None:
    """Train a DynMoE language model; metrics go to OUT/metrics.jsonl, weights to OUT/model.

    Flags override the config (--router and --experts as name:key=value,...).
    """
    from dynroute.parallel import is_launched
    from dynroute.parallel.relaunch import data_parallel_size, rendezvous

    flags = dict(
        data=data, router=router, experts=experts, steps=steps, seed=seed, threads=threads,
        device=device, dtype=dtype, compile=compile, grad_accum=grad_accum,
        activation_checkpointing=activation_checkpointing, ep_schedule=ep_schedule,
        parallel=None if fsdp is None else ("fsdp" if fsdp else "ddp"),
    )  # fmt: skip
    cfg = run_config(config, flags)
    options.set_threads(cfg.train.threads)
    nproc = data_parallel_size(expert_parallel, nproc)
    world = max(expert_parallel, nproc)
    nodes = rendezvous(nnodes, node_rank, master_addr, master_port)
    if (world > 1 or nodes) and not is_launched():
        flags |= {"expert_parallel": expert_parallel, "restart_from_model": restart_from_model}
        raise typer.Exit(relaunch(cfg, config, out, flags, world, nodes, progress))
    with options.user_errors(interrupted=RESUME):
        result = train_here(cfg, out, progress, expert_parallel, nproc, restart_from_model)
    if int(os.environ.get("RANK", "0")) == 0 and result.final is not None:  # rank 0 reports
        experts = result.final["mean_experts_per_token"]
        print(options.trained(result, out) + f"  {experts:.2f} experts/token")


def run_config(config: Path, flags: dict[str, Any]) -> Any:
    """The config with the flags applied, every value checked before anything is written."""
    from dynroute.train import apply_overrides, load_config
    from dynroute.train.validate import check_corpus, check_run_config

    data = flags.get("data")
    if data is not None and Path(data).exists():
        flags["data"] = str(Path(data).resolve())  # so eval finds it from any folder
    cfg = apply_overrides(load_config(config), **flags)
    given = [name for name, value in flags.items() if value is not None and name != "data"]
    check_run_config(cfg, str(config), given)
    check_corpus(cfg.data.source)
    return cfg


def relaunch(
    cfg: Any,
    config: Path,
    out: Path,
    flags: dict[str, Any],
    world: int,
    nodes: dict[str, str],
    progress: bool,
) -> int:
    """Re-run this command as a torchrun job of ``world`` processes; its exit code."""
    from dynroute.models import DynMoEConfig
    from dynroute.parallel import check_expert_parallel, launch
    from dynroute.parallel.relaunch import relaunch_argv
    from dynroute.train.data import load_data

    if flags["expert_parallel"] > 1:
        num_experts = DynMoEConfig(**cfg.model).num_experts
        check_expert_parallel(num_experts, flags["expert_parallel"], "--expert-parallel")
    load_data(cfg.data)  # tokenize once here, not N times in parallel
    parallel = flags.pop("parallel")
    command = ["train", "--config", str(config), "--out", str(out)]
    if parallel is not None:
        command.append("--fsdp" if parallel == "fsdp" else "--ddp")
    flags["restart_from_model"] = flags["restart_from_model"] or None
    argv = relaunch_argv(command, {**flags, "progress": progress})
    return launch(world, argv, "dynroute.cli", rendezvous=nodes)


def train_here(
    cfg: Any, out: Path, progress: bool, expert_parallel: int, nproc: int, restart: bool
) -> Any:
    """Train in this process (one rank of a job, or the whole run); Ctrl-C stops cleanly
    after the current step when this process is the whole run."""
    from dynroute.train import train as run_training

    with options.interruptible(enabled=expert_parallel == 1 and nproc == 1):
        return run_training(
            cfg, out, progress=progress, expert_parallel=expert_parallel, nproc=nproc,
            restart_from_model=restart,
        )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command()(train)
