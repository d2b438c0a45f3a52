"""`dynroute patch`: put dynamic routing into a local transformers MoE checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from dynroute.commands import options

RANK = 40

ModelDir = Annotated[Path, typer.Argument(help="Local transformers checkpoint folder.")]
TargetExperts = Annotated[
    float | None,
    typer.Option(
        help="Calibrate top-p's p to this mean experts per token on the text (instead of "
        "giving p in --router)."
    ),
]
PerLayer = Annotated[bool, typer.Option(help="With --target-experts: one p per layer.")]
SampleText = Annotated[
    Path | None,
    typer.Option("--data", help="Sample text file (default: a few Python stdlib source files)."),
]
MaxTokens = Annotated[int, typer.Option(help="Tokens of sample text to measure on.")]
SeqLen = Annotated[int, typer.Option(help="Window length for the measurement.")]
DType = Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16.")]
Out = Annotated[
    Path | None, typer.Option(help="Save the patched checkpoint here (else report only).")
]
Force = Annotated[bool, typer.Option(help="Overwrite --out if it exists.")]


@options.command
def patch(
    model_dir: ModelDir,
    router: options.Router = None,
    target_experts: TargetExperts = None,
    per_layer: PerLayer = False,
    data: SampleText = None,
    max_tokens: MaxTokens = 4096,
    seq_len: SeqLen = 256,
    dtype: DType = "auto",
    out: Out = None,
    force: Force = False,
    threads: options.Threads = None,
    progress: options.Progress = True,
    json_out: options.Json = False,
) -> None:
    """Apply a router to MODEL_DIR, report experts per token on sample text, save to --out.

    The settings go into OUT/config.json (dynroute_routing). Load the result with dynroute.hf.load_patched(OUT): plain from_pretrained gives the original routing.
    """  # noqa: E501 (one line, so that --help does not break it mid-sentence)
    from rich.console import Console

    name, kwargs = router_settings(router, target_experts, out, force)
    if data is not None and not data.is_file():
        raise FileNotFoundError(f"--data {data}: no such text file")
    options.set_threads(threads)
    console = Console(stderr=json_out)
    model, tokenizer = load(model_dir, dtype, console)
    ids, source = sample(data, tokenizer, max_tokens)
    measure = {"seq_len": seq_len, "max_tokens": max_tokens, "progress": progress}
    report = measure_patch(model, ids, name, kwargs, target_experts, per_layer, measure, console)
    report = {"source": source, **report}
    if out is not None:
        save(model, tokenizer, report, out)
    if json_out:
        options.print_json({**report, "out": None if out is None else str(out)})
        return
    print_report(model, model_dir, ids.numel(), report, out, console)


def router_settings(
    router: str | None, target_experts: float | None, out: Path | None, force: bool
) -> tuple[str, dict[str, Any]]:
    """(router name, parameters) from --router, checked before the model is loaded."""
    from dynroute.hf import RouterSpec
    from dynroute.routing import parse_router

    if out is not None and out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} exists and is not empty; pass --force to overwrite")
    if router is None and target_experts is None:
        raise ValueError("pass --router name:key=value (e.g. top_p:p=0.4) or --target-experts")
    spec = parse_router(router or "top_p")
    name = spec.pop("name")
    if target_experts is not None and name != "top_p":
        raise ValueError("--target-experts calibrates top_p's p; use --router top_p")
    if target_experts is not None and "p" in spec:
        raise ValueError("give either p (--router top_p:p=...) or --target-experts, not both")
    if name == "top_p" and "p" not in spec and target_experts is None:
        raise ValueError("--router top_p needs p (e.g. top_p:p=0.4) or --target-experts")
    if target_experts is None:
        try:  # bad names and values fail now, before the model is loaded and measured
            RouterSpec.build(name, **spec)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--router {router}: {err}") from None
    return name, spec


def load(model_dir: Path, dtype: str, console: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of a local checkpoint folder."""
    import torch

    from dynroute.hf import check_checkpoint, load_patched, load_tokenizer

    check_checkpoint(model_dir)  # what the folder is, before its tokenizer is looked for
    tokenizer = load_tokenizer(model_dir)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    with console.status(f"loading {model_dir}"):
        return load_patched(model_dir, dtype=torch_dtype), tokenizer


def sample(data: Path | None, tokenizer: Any, max_tokens: int) -> tuple[Any, str]:
    """(token ids, where they came from) of the sample text."""
    from dynroute.hf import as_token_ids, sample_texts

    if data is None:
        texts, source = sample_texts(), "Python stdlib sources (built-in sample)"
    else:
        texts, source = [data.read_text(encoding="utf-8", errors="replace")], str(data)
    return as_token_ids(texts, tokenizer)[:max_tokens], source


def measure_patch(
    model: Any,
    ids: Any,
    name: str,
    kwargs: dict[str, Any],
    target_experts: float | None,
    per_layer: bool,
    measure: dict[str, Any],
    console: Any,
) -> dict[str, Any]:
    """Measure the model's own top-k, apply (or calibrate) the router, measure again."""
    from dynroute.hf import apply_routing, calibrate_p, evaluate_ids

    apply_routing(model, "top_k")
    before = evaluate_ids(model, ids, **measure)
    if target_experts is not None:
        cal = calibrate_p(model, ids, target_experts, per_layer=per_layer, **measure, **kwargs)
        console.print(f"calibrated p = {cal.p} (mean experts {cal.mean_experts:.3f})")
    else:
        apply_routing(model, name, **kwargs)
    return {"original": before, "patched": evaluate_ids(model, ids, **measure)}


def save(model: Any, tokenizer: Any, report: dict[str, Any], out: Path) -> None:
    """Write the patched checkpoint; only a complete one ever appears under ``out``."""
    from dynroute.common.jsonfile import write_json
    from dynroute.hf import save_patched

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_patched(model, partial, tokenizer)
    write_json(partial / "dynroute_patch_report.json", report)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)


def print_report(
    model: Any,
    model_dir: Path,
    tokens: int,
    report: dict[str, Any],
    out: Path | None,
    console: Any,
) -> None:
    """The before/after table, experts per layer, and where the checkpoint was saved."""
    from dynroute.hf import adapted_blocks, routing_config

    names = sorted({b.spec.describe() for b in adapted_blocks(model)})
    label = names[0] if len(names) == 1 else f"{len(names)} per-layer settings"
    rows = [
        (row_label, f"{res['mean_experts']:.3f}", f"{res['expert_fraction']:.1%}",
         f"{res['perplexity']:.3f}", f"{res['tokens_per_s']:.0f}")
        for row_label, res in (("original (top_k)", report["original"]), (label, report["patched"]))
    ]  # fmt: skip
    title = f"{model_dir.name} on {tokens} tokens of {report['source']}"
    columns = ("routing", "mean experts/token", "vs own k", "perplexity", "tokens/s")
    options.print_table(options.table(title, columns, rows), console)
    after = report["patched"]["mean_experts_per_layer"]
    console.print("per layer: " + ", ".join(f"{k}: {v:.2f}" for k, v in after.items()))
    if out is None:
        console.print("not saved (pass --out DIR to save the patched checkpoint)")
        return
    settings = json.dumps(routing_config(model))
    console.print(f"saved to {out} (config.json: dynroute_routing = {settings})", markup=False)
    console.print(f"load it with: dynroute.hf.load_patched({str(out)!r})", markup=False)


def register(app: typer.Typer) -> None:
    app.command("patch")(patch)
