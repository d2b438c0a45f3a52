"""`dynroute train`: train (or resume) a small MoE language model from a TOML config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def rendezvous(
    nnodes: int | None, node_rank: int | None, master_addr: str | None, master_port: int | None
) -> dict[str, str]:
    """torchrun's multi-node flags from the command's (empty when none was given).

    Example:
        >>> rendezvous(2, 0, "10.0.0.1", 29500)["--master-addr"]
        '10.0.0.1'
        >>> rendezvous(None, None, None, None)
        {}
    """
    given = {
        "--nnodes": nnodes,
        "--node-rank": node_rank,
        "--master-addr": master_addr,
        "--master-port": master_port,
    }
    flags = {k: str(v) for k, v in given.items() if v is not None}
    if flags and (nnodes is None or master_addr is None):
        raise ValueError(
            "multi-node training needs at least --nnodes and --master-addr (and --node-rank "
            "on every machine but the first); see docs/training.md"
        )
    if nnodes is not None and nnodes < 1:
        raise ValueError(f"--nnodes {nnodes}: use an integer >= 1")
    if node_rank is not None and nnodes is not None and not 0 <= node_rank < nnodes:
        raise ValueError(f"--node-rank {node_rank}: use 0..{nnodes - 1} for --nnodes {nnodes}")
    return flags


def relaunch_argv(config: Path, out: Path, progress: bool, **flags: Any) -> list[str]:
    """The ``dynroute train`` arguments each torchrun rank runs (the given flags only).

    Example:
        >>> relaunch_argv(Path("c.toml"), Path("r"), False, steps=5, compile=True, k=None)
        ['train', '--config', 'c.toml', '--out', 'r', '--steps', '5', '--compile', '--no-progress']
    """
    argv = ["train", "--config", str(config), "--out", str(out)]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if name == "parallel":
            argv.append("--fsdp" if value == "fsdp" else "--ddp")
        elif isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return [*argv, "--progress" if progress else "--no-progress"]


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        config: Annotated[
            Path, typer.Option("--config", help="TOML run config, e.g. configs/tiny.toml.")
        ],
        out: Annotated[
            Path, typer.Option("--out", help="Run folder; rerun the same command to resume.")
        ],
        data: Annotated[
            str | None,
            typer.Option(help="Corpus: text file, folder or saved datasets folder."),
        ] = None,
        router: Annotated[
            str | None,
            typer.Option(
                help="A registered router, with parameters as name:key=value,... "
                "(e.g. top_p:p=0.4, null_experts:k=2,num_null=4, or your own); "
                "default: the config's."
            ),
        ] = None,
        k: Annotated[
            int | None, typer.Option(help="Shorthand: the router's k (top_k, null_experts).")
        ] = None,
        p: Annotated[float | None, typer.Option(help="Shorthand: top_p's threshold.")] = None,
        steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
        seed: Annotated[int | None, typer.Option(help="Seed for init and data sampling.")] = None,
        threads: Annotated[
            int | None, typer.Option(help="CPU threads (1 is fastest on a busy shared machine).")
        ] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
        expert_parallel: Annotated[
            int,
            typer.Option(
                "--expert-parallel",
                min=1,
                help="Run N CPU processes (torchrun, gloo) that each hold num_experts/N "
                "experts of every MoE layer and train on their own batches.",
            ),
        ] = 1,
        device: Annotated[
            str | None, typer.Option(help="auto (CUDA when present) | cpu | cuda | cuda:I.")
        ] = None,
        dtype: Annotated[
            str | None,
            typer.Option(help="float32 | bfloat16 (autocast; weights stay float32)."),
        ] = None,
        compile: Annotated[
            bool | None,
            typer.Option("--compile/--no-compile", help="torch.compile each block."),
        ] = None,
        grad_accum: Annotated[
            int | None, typer.Option(help="Micro-batches per optimizer step.")
        ] = None,
        activation_checkpointing: Annotated[
            bool | None,
            typer.Option(
                "--activation-checkpointing/--no-activation-checkpointing",
                help="Recompute each block's activations in the backward pass.",
            ),
        ] = None,
        nproc: Annotated[
            int,
            typer.Option(
                "--nproc",
                min=1,
                help="Data-parallel processes on this machine (torchrun underneath; gloo "
                "on CPU, NCCL on GPU); each trains on batch_size rows per micro-batch.",
            ),
        ] = 1,
        fsdp: Annotated[
            bool | None,
            typer.Option("--fsdp/--ddp", help="With --nproc: FSDP2 (fully_shard) instead of DDP."),
        ] = None,
        nnodes: Annotated[
            int | None, typer.Option(help="torchrun: machines in the job (multi-node).")
        ] = None,
        node_rank: Annotated[
            int | None, typer.Option(help="torchrun: this machine's index, 0..nnodes-1.")
        ] = None,
        master_addr: Annotated[
            str | None, typer.Option(help="torchrun: address of the node with node-rank 0.")
        ] = None,
        master_port: Annotated[
            int | None, typer.Option(help="torchrun: free TCP port on that node.")
        ] = None,
        restart_from_model: Annotated[
            bool,
            typer.Option(
                "--restart-from-model",
                help="Continue from the weights and step of OUT/model (fresh optimizer state) "
                "when OUT/checkpoint.pt is damaged.",
            ),
        ] = False,
    ) -> None:
        """Train a DynMoE language model; metrics go to OUT/metrics.jsonl, weights to OUT/model."""
        import contextlib
        import os

        import torch
        from rich.console import Console
        from rich.markup import escape

        from dynroute.parallel import check_expert_parallel, is_launched, launch
        from dynroute.train import apply_overrides, load_config
        from dynroute.train import train as run_training
        from dynroute.train.interrupt import TrainingInterrupted, stop_on_sigint
        from dynroute.train.loop import ConfigMismatchError
        from dynroute.train.validate import check_corpus, check_probability, check_run_config

        console = Console()
        try:
            cfg = load_config(config)
            if data is not None and Path(data).exists():
                data = str(Path(data).resolve())  # so eval finds it from any folder
            settings = dict(
                device=device,
                dtype=dtype,
                compile=compile,
                grad_accum=grad_accum,
                activation_checkpointing=activation_checkpointing,
                parallel=None if fsdp is None else ("fsdp" if fsdp else "ddp"),
            )
            check_probability(p, "--p")
            cfg = apply_overrides(
                cfg, router=router, k=k, p=p, steps=steps, seed=seed, data=data, threads=threads,
                **settings,
            )  # fmt: skip
            given = {
                "router": router,
                "k": k,
                "p": p,
                "steps": steps,
                "seed": seed,
                "threads": threads,
                **settings,
            }
            flags = [name for name, value in given.items() if value is not None]
            check_run_config(cfg, str(config), flags)  # every value, before anything is written
            check_corpus(cfg.data.source)
            if cfg.train.threads:  # a process setting: the command's, not the library's
                torch.set_num_threads(cfg.train.threads)
            if expert_parallel > 1 and nproc > 1 and expert_parallel != nproc:
                raise ValueError(
                    f"--expert-parallel {expert_parallel} with --nproc {nproc}: experts are "
                    "sharded over every process, so use the same number (or leave one at 1)"
                )
            if is_launched() and expert_parallel == 1:
                # A rank (of our launch, or of the user's own torchrun): data-parallel over
                # every process of the job. (--nproc itself is not passed to the ranks:
                # torchrun's parser would take it for its own --nproc-per-node.)
                nproc = int(os.environ["WORLD_SIZE"])
            world = max(expert_parallel, nproc)
            nodes = rendezvous(nnodes, node_rank, master_addr, master_port)
            if (world > 1 or nodes) and not is_launched():
                from dynroute.models import DynMoEConfig
                from dynroute.train.data import load_data

                if expert_parallel > 1:
                    num_experts = DynMoEConfig(**cfg.model).num_experts
                    check_expert_parallel(num_experts, expert_parallel, "--expert-parallel")
                load_data(cfg.data)  # tokenize once here, not N times in parallel
                argv = relaunch_argv(
                    config, out, progress,
                    data=data, router=router, k=k, p=p, steps=steps, seed=seed,
                    threads=threads, expert_parallel=expert_parallel,
                    restart_from_model=restart_from_model or None, **settings,
                )  # fmt: skip
                raise typer.Exit(launch(world, argv, "dynroute.cli", rendezvous=nodes))
            interruptible = expert_parallel == 1 and nproc == 1
            with stop_on_sigint() if interruptible else contextlib.nullcontext():
                result = run_training(
                    cfg,
                    out,
                    progress=progress,
                    expert_parallel=expert_parallel,
                    nproc=nproc,
                    restart_from_model=restart_from_model,
                )
        except (FileNotFoundError, ValueError, TypeError, ConfigMismatchError) as err:
            Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(2) from err
        except TrainingInterrupted as err:
            Console(stderr=True, soft_wrap=True).print(f"[yellow]{err}[/yellow]")
            raise typer.Exit(130) from err
        except KeyboardInterrupt as err:  # a second Ctrl-C, or one before the first step
            Console(stderr=True, soft_wrap=True).print(
                "[yellow]interrupted; rerun the same command to resume (from the last "
                "checkpoint, if one was written)[/yellow]"
            )
            raise typer.Exit(130) from err
        if int(os.environ.get("RANK", "0")) != 0:
            return  # rank 0 reports for the whole job
        if result.final is not None:
            f = result.final
            console.print(
                f"done: {result.steps} steps, {result.tokens:,} tokens -> {out}\n"
                f"val loss {f['val_loss']:.4f}  ppl {f['perplexity']:.2f}  "
                f"{f['mean_experts_per_token']:.2f} experts/token"
            )
