"""`dynroute train`: train (or resume) a small MoE language model from a TOML config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
            check_probability(p, "--p")
            cfg = apply_overrides(
                cfg, router=router, k=k, p=p, steps=steps, seed=seed, data=data, threads=threads
            )
            given = {
                "router": router,
                "k": k,
                "p": p,
                "steps": steps,
                "seed": seed,
                "threads": threads,
            }
            flags = [name for name, value in given.items() if value is not None]
            check_run_config(cfg, str(config), flags)  # every value, before anything is written
            check_corpus(cfg.data.source)
            if cfg.train.threads:  # a process setting: the command's, not the library's
                torch.set_num_threads(cfg.train.threads)
            if expert_parallel > 1 and not is_launched():
                from dynroute.models import DynMoEConfig
                from dynroute.train.data import load_data

                num_experts = DynMoEConfig(**cfg.model).num_experts
                check_expert_parallel(num_experts, expert_parallel, "--expert-parallel")
                load_data(cfg.data)  # tokenize once here, not N times in parallel
                argv = ["train", "--config", str(config), "--out", str(out)]
                for flag, value in (
                    ("--data", data), ("--router", router), ("--k", k), ("--p", p),
                    ("--steps", steps), ("--seed", seed), ("--threads", threads),
                ):  # fmt: skip
                    if value is not None:
                        argv += [flag, str(value)]
                argv += ["--progress" if progress else "--no-progress"]
                argv += ["--expert-parallel", str(expert_parallel)]
                raise typer.Exit(launch(expert_parallel, argv))
            with stop_on_sigint() if expert_parallel == 1 else contextlib.nullcontext():
                result = run_training(
                    cfg,
                    out,
                    progress=progress,
                    expert_parallel=expert_parallel,
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
