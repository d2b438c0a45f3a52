"""`dynroute patch`: put dynamic routing into a local transformers MoE checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    app.command("patch")(patch)


def _router_kwargs(router: str, **shorthands: Any) -> tuple[str, dict[str, Any]]:
    """Split ``name:key=value,...`` and merge the shorthand flags that were given."""
    from dynroute.routing import parse_router

    try:
        spec = parse_router(router)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--router") from None
    name = spec.pop("name")
    return name, {**spec, **{k: v for k, v in shorthands.items() if v is not None}}


def patch(
    model_dir: Annotated[Path, typer.Argument(help="Local transformers checkpoint folder.")],
    router: str = typer.Option(
        "top_p",
        help="A registered router with its parameters, name:key=value,... (e.g. top_p:p=0.4, "
        "null_experts:null_logit=0.5, your own); the flags below are shorthands.",
    ),
    p: float = typer.Option(None, help="top_p threshold in (0, 1]."),
    target_experts: float = typer.Option(
        None, help="Instead of --p: calibrate p to this mean experts per token on the text."
    ),
    per_layer: bool = typer.Option(False, help="With --target-experts: one p per layer."),
    k: int = typer.Option(None, help="top_k / null_experts slots (default: the model's k)."),
    max_experts: int = typer.Option(None, help="top_p: cap on experts per token."),
    null_logit: float = typer.Option(None, help="null_experts: logit of every null expert."),
    num_null: int = typer.Option(None, help="null_experts: how many null experts."),
    capacity_factor: float = typer.Option(None, help="expert_choice capacity factor."),
    normalize: bool = typer.Option(
        None, "--normalize/--no-normalize", help="Renormalise kept weights (default: as the model)."
    ),
    text: Annotated[
        Path | None,
        typer.Option(help="Sample text file (default: a few Python stdlib source files)."),
    ] = None,
    max_tokens: int = typer.Option(4096, help="Tokens of sample text to measure on."),
    seq_len: int = typer.Option(256, help="Window length for the measurement."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16."),
    out: Annotated[
        Path | None, typer.Option(help="Save the patched checkpoint here (else report only).")
    ] = None,
    force: bool = typer.Option(False, help="Overwrite --out if it exists."),
) -> None:
    """Apply a router to MODEL_DIR, report experts per token on sample text, save to --out.

    The settings go into OUT/config.json (dynroute_routing). Load the result with dynroute.hf.load_patched(OUT): plain from_pretrained gives the original routing.
    """  # noqa: E501 (one line, so that --help does not break it mid-sentence)
    import torch
    from rich.console import Console
    from rich.table import Table

    from dynroute.hf import (
        CheckpointError,
        RouterSpec,
        apply_routing,
        as_token_ids,
        calibrate_p,
        evaluate_ids,
        load_patched,
        load_tokenizer,
        routing_config,
        sample_texts,
        save_patched,
    )

    console = Console()
    router, kwargs = _router_kwargs(
        router,
        p=p,
        k=k,
        max_experts=max_experts,
        null_logit=null_logit,
        num_null=num_null,
        capacity_factor=capacity_factor,
        normalize=normalize,
    )
    p = kwargs.get("p")
    if out is not None and out.exists() and any(out.iterdir()) and not force:
        raise typer.BadParameter(f"{out} exists and is not empty; pass --force to overwrite")
    if target_experts is not None and p is not None:
        raise typer.BadParameter("give either --p or --target-experts, not both")
    if target_experts is not None and router != "top_p":
        raise typer.BadParameter("--target-experts calibrates top_p; use --router top_p")
    if router == "top_p" and p is None and target_experts is None:
        raise typer.BadParameter("--router top_p needs --p or --target-experts")
    if target_experts is None:
        try:  # bad names and values fail now, before the model is loaded and measured
            RouterSpec.build(router, **kwargs)
        except (TypeError, ValueError) as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(2) from err
    try:
        tokenizer = load_tokenizer(model_dir)
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        with console.status(f"loading {model_dir}"):
            model = load_patched(model_dir, dtype=torch_dtype)
    except CheckpointError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err

    if text is not None:
        if not text.is_file():
            raise typer.BadParameter(f"no text file at {text}")
        texts = [text.read_text(encoding="utf-8", errors="replace")]
        source = str(text)
    else:
        texts, source = sample_texts(), "Python stdlib sources (built-in sample)"
    ids = as_token_ids(texts, tokenizer)[:max_tokens]
    measure = {"seq_len": seq_len, "max_tokens": max_tokens}

    apply_routing(model, "top_k")
    before = evaluate_ids(model, ids, progress=True, **measure)
    try:
        if target_experts is not None:
            kwargs.pop("p", None)
            cal = calibrate_p(
                model, ids, target_experts, per_layer=per_layer, progress=True, **measure, **kwargs
            )
            console.print(f"calibrated p = {cal.p} (mean experts {cal.mean_experts:.3f})")
        else:
            apply_routing(model, router, **kwargs)
    except (TypeError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    after = evaluate_ids(model, ids, progress=True, **measure)

    table = Table(title=f"{model_dir.name} on {ids.numel()} tokens of {source}")
    for col in ("routing", "mean experts/token", "vs own k", "perplexity", "tokens/s"):
        table.add_column(col, justify="right" if col != "routing" else "left")
    for label, res in (("original (top_k)", before), (_describe(model), after)):
        table.add_row(
            label,
            f"{res['mean_experts']:.3f}",
            f"{res['expert_fraction']:.1%}",
            f"{res['perplexity']:.3f}",
            f"{res['tokens_per_s']:.0f}",
        )
    console.print(table)
    layers = ", ".join(f"{k}: {v:.2f}" for k, v in after["mean_experts_per_layer"].items())
    console.print(f"per layer: {layers}")

    if out is None:
        console.print("not saved (pass --out DIR to save the patched checkpoint)")
        return
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_patched(model, partial, tokenizer)
    report = {"source": source, "original": before, "patched": after}
    (partial / "dynroute_patch_report.json").write_text(json.dumps(report, indent=2))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)  # only a complete checkpoint ever appears under --out
    settings = routing_config(model)
    console.print(f"saved to {out} (config.json: dynroute_routing = {json.dumps(settings)})")
    console.print(f"load it with: dynroute.hf.load_patched({str(out)!r})")


def _describe(model: Any) -> str:
    from dynroute.hf import adapted_blocks

    names = sorted({b.spec.describe() for b in adapted_blocks(model)})
    return names[0] if len(names) == 1 else f"{len(names)} per-layer settings"
