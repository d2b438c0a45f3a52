"""`dynroute lora train`: LoRA experts on a frozen base model, trained on several domains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    lora_app = typer.Typer(
        help="Mixtures of LoRA experts on a frozen base (MoLE, DynMoLE, SMoRA).",
        no_args_is_help=True,
    )
    app.add_typer(lora_app, name="lora")

    @lora_app.command("train")
    def train(
        base: Annotated[
            Path,
            typer.Option(
                "--base", help="Base model: the --out of `dynroute train` or any model folder."
            ),
        ],
        config: Annotated[
            Path, typer.Option("--config", help="TOML config, e.g. configs/lora_tiny.toml.")
        ],
        out: Annotated[
            Path, typer.Option("--out", help="Run folder; rerun the same command to resume.")
        ],
        data: Annotated[
            str | None,
            typer.Option(
                help="Domains: 'builtin', a folder with one sub-folder per domain, or a "
                "datasets save_to_disk folder with a domain column."
            ),
        ] = None,
        domain_column: Annotated[
            str | None,
            typer.Option(help="The domain column of a saved datasets folder (default: domain)."),
        ] = None,
        router: Annotated[
            str | None,
            typer.Option(help="Router as name:key=value,... (e.g. dynmole, top_p:p=0.5)."),
        ] = None,
        steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
        threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    ) -> None:
        """Train LoRA experts: adapters to OUT/adapters, per-domain results to OUT/result.json."""

        import torch
        from rich.console import Console

        from dynroute.data.corpus import CorpusError
        from dynroute.lora.train import LoRARunConfig, load_lora_config, train_lora
        from dynroute.train.loop import ConfigMismatchError

        try:
            cfg = load_lora_config(config)
            raw = cfg.to_dict()
            for table, key, value in (
                ("data", "source", data), ("lora", "router", router), ("train", "steps", steps),
                ("train", "threads", threads), ("data", "domain_column", domain_column),
            ):  # fmt: skip
                if value is not None:
                    raw[table][key] = value
            cfg = LoRARunConfig.from_dict(raw, origin=str(config))
            if cfg.train.threads:  # a process setting: the command's, not the library's
                torch.set_num_threads(cfg.train.threads)
            result = train_lora(cfg, base, out, progress=progress)
        except (
            FileNotFoundError, ValueError, TypeError, ConfigMismatchError, CorpusError
        ) as err:  # fmt: skip
            Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {err}", markup=True)
            raise typer.Exit(2) from err
        console = Console()
        if result["resumed_from"]:
            console.print(f"resumed from step {result['resumed_from']}")
        console.print(
            f"done: {result['steps']} steps, {result['trainable_parameters']:,} trainable "
            f"parameters -> {out}/adapters"
        )
        for name, r in result["domains"].items():
            console.print(
                f"  {name:<12} val loss {r['loss']:.4f}  {r['experts_per_token']:.2f} experts/token"
            )
