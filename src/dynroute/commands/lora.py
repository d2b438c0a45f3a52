"""`dynroute lora train BASE`: LoRA experts on a frozen base model, trained on several domains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dynroute.commands import options

RANK = 75

lora_app = typer.Typer(
    help="Mixtures of LoRA experts on a frozen base (MoLE, DynMoLE, SMoRA).",
    no_args_is_help=True,
)

Base = Annotated[
    Path,
    typer.Argument(help="Base model: the --out of `dynroute train` or any model folder."),
]
Domains = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Domains: 'builtin', a folder with one sub-folder per domain, or a datasets "
        "save_to_disk folder with a domain column.",
    ),
]
DomainColumn = Annotated[
    str | None,
    typer.Option(help="The domain column of a saved datasets folder (default: domain)."),
]


@lora_app.command("train")
@options.command
def train(
    base: Base,
    config: options.Config,
    out: options.RunFolder,
    data: Domains = None,
    domain_column: DomainColumn = None,
    router: options.Router = None,
    steps: options.Steps = None,
    seed: options.Seed = None,
    threads: options.Threads = None,
    progress: options.Progress = True,
    json_out: options.Json = False,
) -> None:
    """Train LoRA experts on BASE: adapters to OUT/adapters, per-domain results to
    OUT/result.json (what --json prints)."""
    from dynroute.lora.train import load_lora_config, train_lora
    from dynroute.train import apply_overrides

    cfg = apply_overrides(
        load_lora_config(config), data=data, domain_column=domain_column, router=router,
        steps=steps, seed=seed, threads=threads,
    )  # fmt: skip
    with options.interruptible(cfg.train.threads):
        result = train_lora(cfg, base, out, progress=progress and not json_out)
    if json_out:
        options.print_json(result)
        return
    if result["resumed_from"]:
        print(f"resumed from step {result['resumed_from']}")
    print(
        f"done: {result['steps']} steps, {result['trainable_parameters']:,} trainable "
        f"parameters -> {out}/adapters"
    )
    for name, r in result["domains"].items():
        print(f"  {name:<12} val loss {r['loss']:.4f}  {r['experts_per_token']:.2f} experts/token")


def register(app: typer.Typer) -> None:
    app.add_typer(lora_app, name="lora")
