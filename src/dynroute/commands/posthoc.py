"""`dynroute posthoc`: route a trained top-k model with fewer experts, measured."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dynroute.commands import options

RANK = 45

ModelDir = Annotated[
    Path,
    typer.Argument(help="A trained top-k model: a `dynroute train` run, its model/ folder, or "
                   "a transformers MoE checkpoint."),
]  # fmt: skip
Targets = Annotated[
    str, typer.Option(help="Mean experts per token to calibrate to, as fractions of the model's k.")
]
Methods = Annotated[
    str,
    typer.Option(help="Comma-separated: top_k (static smaller k), top_p, top_p_norm, "
                 "top_p_layer, threshold, entropy."),
]  # fmt: skip
Fixes = Annotated[
    str,
    typer.Option(help="Comma-separated cheap fixes: router_ft, null_ft (DynMoE models), distill; "
                 "none by default."),
]  # fmt: skip
FixTokens = Annotated[int, typer.Option(help="Training tokens each fix may use.")]
EvalWindows = Annotated[int, typer.Option(help="Evaluation windows (of the model's eval set).")]
CalibTokens = Annotated[int, typer.Option(help="Held-out tokens to calibrate each method on.")]
Out = Annotated[Path | None, typer.Option(help="Write the rows to this JSON file.")]


@options.command
def posthoc(
    model_dir: ModelDir,
    targets: Targets = "1,0.9,0.75,0.6,0.5",
    methods: Methods = "top_k,top_p,top_p_norm,top_p_layer,threshold,entropy",
    fixes: Fixes = "",
    fix_tokens: FixTokens = 8192,
    eval_windows: EvalWindows = 64,
    calib_tokens: CalibTokens = 3072,
    out: Out = None,
    threads: options.Threads = None,
    progress: options.Progress = True,
    json_out: options.Json = False,
) -> None:
    """Apply each dynamic router to MODEL_DIR at fractions of its k; print loss, experts/token and top-1 kept."""  # noqa: E501 (one line for --help)
    from rich.console import Console

    from dynroute.posthoc import FIXES, SweepSettings, method_names, posthoc_model

    fractions = parse_targets(targets)
    fix_list = [f.strip() for f in fixes.split(",") if f.strip()]
    unknown = [f for f in fix_list if f not in FIXES]
    if unknown:
        raise ValueError(f"--fixes: unknown {unknown}; choose from {', '.join(FIXES)}")
    settings = SweepSettings(targets=fractions, methods=method_names(methods), fixes=fix_list,
                             fix_tokens=fix_tokens)  # fmt: skip
    options.set_threads(threads)
    console = Console(stderr=True)
    show = progress and not json_out
    tell = (lambda text: console.print(text, markup=False)) if show else None
    rows = posthoc_model(model_dir, settings, eval_windows=eval_windows,
                         calib_tokens=calib_tokens, progress=tell)  # fmt: skip
    if out is not None:
        from dynroute.common.jsonfile import write_json

        write_json(out, rows)
    if json_out:
        options.print_json(rows)
        return
    print_rows(model_dir, rows)


def parse_targets(text: str) -> list[float]:
    """``"1,0.75,0.5"`` -> [1.0, 0.75, 0.5]; a word that is not a number fails here."""
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(
            f"--targets {text!r}: give fractions of the model's k, e.g. 1,0.75,0.5"
        ) from None


def print_rows(model_dir: Path, rows: list[dict[str, Any]]) -> None:
    """One table row per setting."""
    from dynroute.common.numbers import format_number

    columns = ("method", "target", "experts/token", "of k", "val loss", "Δ loss", "top-1 kept")
    body = [
        (r["method"], f"{r['target']:g} k", format_number(r["mean_experts"], ".3f"),
         format_number(r["expert_fraction"], ".1%"), format_number(r["val_loss"], ".4f"),
         format_number(r["loss_delta_pct"] / 100, "+.2%"), format_number(r["top1_kept"], ".1%"))
        for r in rows
    ]  # fmt: skip
    title = f"{model_dir}: top-{rows[0]['k']} of {rows[0]['num_experts']} experts, post hoc"
    options.print_table(options.table(title, columns, body))


def register(app: typer.Typer) -> None:
    app.command("posthoc")(posthoc)
