"""`dynroute lora train BASE`: LoRA experts on a frozen base model, trained on several domains;
`dynroute lora library build BASE | eval LIBRARY`: a library of single-domain adapters and
the routers among them (Arrow, PHATGOOSE, dynamic-k, baselines)."""

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


library_app = typer.Typer(
    help="A library of independently trained adapters, routed per token (Arrow, PHATGOOSE, "
    "dynamic-k).",
    no_args_is_help=True,
)
lora_app.add_typer(library_app, name="library")

LibraryDomains = Annotated[
    str | None,
    typer.Option(
        "--domains",
        help="Comma-separated domains of the library, held-out ones included (default: all "
        "of the data's).",
    ),
]
HeldOut = Annotated[
    str | None,
    typer.Option(
        "--held-out",
        help="Comma-separated domains no adapter trains on (evaluated only); default: the "
        "last domain.",
    ),
]
GateSteps = Annotated[
    int | None,
    typer.Option("--gate-steps", help="Steps of each PHATGOOSE gate run (default: --steps)."),
]
Mole = Annotated[
    bool,
    typer.Option("--mole/--no-mole", help="Also train the jointly trained MoLE reference."),
]
Library = Annotated[
    Path, typer.Argument(help="A library folder: the --out of `dynroute lora library build`.")
]
TopK = Annotated[int, typer.Option("--top-k", help="k of the top-k routers (and dynamic-k's cap).")]
MaxBatches = Annotated[
    int | None,
    typer.Option("--max-batches", help="Validation batches per domain (default: the config's)."),
]


@library_app.command("build")
@options.command
def library_build(
    base: Base,
    config: options.Config,
    out: options.RunFolder,
    data: Domains = None,
    domains: LibraryDomains = None,
    held_out: HeldOut = None,
    steps: options.Steps = None,
    gate_steps: GateSteps = None,
    mole: Mole = True,
    seed: options.Seed = None,
    threads: options.Threads = None,
    progress: options.Progress = True,
    json_out: options.Json = False,
) -> None:
    """Train one adapter per domain on BASE, its PHATGOOSE gates and the joint MoLE into
    OUT (OUT/library.json, what --json prints); then `dynroute lora library eval OUT`."""
    from dynroute.lora.library.build import build_library
    from dynroute.lora.train import load_lora_config
    from dynroute.train import apply_overrides

    def names(text: str | None) -> list[str] | None:
        return [d.strip() for d in text.split(",") if d.strip()] if text else None

    cfg = apply_overrides(load_lora_config(config), data=data, domains=names(domains),
                          steps=steps, seed=seed, threads=threads)  # fmt: skip
    held = names(held_out)
    with options.interruptible(cfg.train.threads):
        info = build_library(cfg, base, out, held, gate_steps, mole,
                             progress=progress and not json_out)  # fmt: skip
    if json_out:
        options.print_json(info)
        return
    print(f"done: {len(info['adapters'])} adapters ({', '.join(info['held_in'])}), held out "
          f"{', '.join(info['held_out'])} -> {out}")  # fmt: skip
    print(f"next: dynroute lora library eval {out}")


@library_app.command("eval")
@options.command
def library_eval(
    library: Library,
    top_k: TopK = 2,
    max_batches: MaxBatches = None,
    threads: options.Threads = None,
    progress: options.Progress = True,
    json_out: options.Json = False,
) -> None:
    """Evaluate every library router, the base and the MoLE on held-in and held-out
    domains: the table, LIBRARY/eval.json (what --json prints), eval.png, eval.html."""
    from dynroute.lora.library.report import evaluate_library, result_rows, write_report

    options.set_threads(threads)
    if top_k < 1:
        raise ValueError(f"--top-k {top_k}: must be at least 1")
    result = evaluate_library(library, top_k, max_batches, progress and not json_out)
    page = write_report(library, result)
    if json_out:
        options.print_json(result)
        return
    header, rows = result_rows(result)
    options.print_table(options.table(f"adapter library {library}", header, rows))
    print(f"report: {page}")


def register(app: typer.Typer) -> None:
    app.add_typer(lora_app, name="lora")
