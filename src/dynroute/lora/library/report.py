"""Evaluate every library router on held-in and held-out domains; table, plot, page.

``dynroute lora library eval`` is :func:`evaluate_library`: the base model alone, each
registered library router at the settings its class names (``evaluation_specs``), and the
jointly trained MoLE, on every domain's validation tokens. Writes ``eval.json``,
``eval.png`` (mean loss against adapters used per token, held-in and held-out) and
``eval.html`` into the library folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dynroute.checkpoints import load_model
from dynroute.common.html import figure, note, table, write_figure, write_page
from dynroute.common.jsonfile import write_json
from dynroute.common.numbers import format_number
from dynroute.data import iter_eval_batches
from dynroute.evaluation import evaluate_lm
from dynroute.lora.apply import load_lora_experts
from dynroute.lora.config import LoRARunConfig
from dynroute.lora.layer import lora_layers
from dynroute.lora.library.build import read_library, read_tokens
from dynroute.lora.library.folders import GATES_FILE
from dynroute.lora.library.layer import library_layers
from dynroute.lora.library.load import load_adapter_library, set_library_router
from dynroute.lora.library.routers import LIBRARY_ROUTERS
from dynroute.train.progress import progress_bar

__all__ = ["EVAL_JSON", "evaluate_library", "evaluate_routed", "loss_vs_adapters_figure",
           "result_rows", "write_report"]  # fmt: skip

EVAL_JSON = "eval.json"


@torch.no_grad()
def evaluate_routed(
    model: nn.Module, val: dict[str, np.ndarray], batch_size: int, seq_len: int,
    max_batches: int | None = None,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Per domain: loss and adapters (experts) per token, averaged over the routed linears
    (library or MoLE layers; 0 for the base alone)."""
    layers = [*library_layers(model).values(), *lora_layers(model).values()]
    out = {}
    for name, tokens in val.items():
        used = {"assignments": 0.0, "tokens": 0}

        def record(_output: Any, losses: torch.Tensor, used: dict = used) -> None:
            for layer in layers:
                if layer.last_routing is not None:
                    used["assignments"] += layer.last_routing.num_assignments / len(layers)
            used["tokens"] += losses.numel()

        batches = iter_eval_batches(tokens, batch_size, seq_len, max_batches)
        result = evaluate_lm(model, batches, after_batch=record)
        per_token = used["assignments"] / max(used["tokens"], 1)
        out[name] = {"loss": result.loss, "adapters_per_token": per_token}
    return out


def _row(
    label: str, kind: str, domains: dict[str, dict[str, float]], info: dict,
    spec: dict[str, Any] | None = None,
) -> dict:  # fmt: skip
    def mean(names: list[str], key: str) -> float | None:
        vals = [domains[d][key] for d in names if d in domains]
        return float(np.mean(vals)) if vals else None

    return {
        "router": label, "kind": kind, "spec": spec, "domains": domains,
        "held_in_loss": mean(info["held_in"], "loss"),
        "held_out_loss": mean(info["held_out"], "loss"),
        "adapters_per_token": mean(list(domains), "adapters_per_token"),
    }  # fmt: skip


def evaluate_library(
    folder: Path | str,
    top_k: int = 2,
    max_batches: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the library in ``folder`` (written by ``build_library``).

    Args:
        top_k: the k of the top-k routers (and the cap of dynamic-k);
        max_batches: validation batches per domain (None: ``[train] eval_batches``);
        progress: a bar on stderr, one step per router evaluated on every domain.

    Returns:
        ``eval.json``'s content: ``{"held_in", "held_out", "rows": [{"router", "kind",
        "spec" (a library router's dict), "domains": {d: {"loss", "adapters_per_token"}},
        "held_in_loss", "held_out_loss", "adapters_per_token"}]}``.
    """
    folder = Path(folder)
    info = read_library(folder)
    cfg = LoRARunConfig.from_dict(info["config"], origin=str(folder / "library.json"))
    base = Path(info["base"])
    tokens = read_tokens(cfg, base)
    t = cfg.train
    batches = max_batches if max_batches is not None else t.eval_batches

    def evaluate(m: nn.Module, only: list[str] | None = None) -> dict[str, dict[str, float]]:
        val = {d: v for d, v in tokens.val.items() if only is None or d in only}
        return evaluate_routed(m, val, t.batch_size, t.seq_len, batches)

    names = list(info["adapters"])
    folders = [folder / info["adapters"][d] for d in names]
    model = load_adapter_library(load_model(base).model, folders, top_k=top_k, names=names)
    gates = all((f / GATES_FILE).is_file() for f in folders)
    LIBRARY_ROUTERS.discover()
    routers = [LIBRARY_ROUTERS.build(spec) for _name, cls in sorted(LIBRARY_ROUTERS.items())
               for spec in cls.evaluation_specs(len(names), top_k, gates)]  # fmt: skip
    total = len(routers) + 1 + bool(info.get("mole"))
    with progress_bar(progress, total, 0, "evaluating") as update:
        rows = [_row("base model", "base", evaluate(load_model(base).model), info)]
        for router in routers:
            if update is not None:
                update(len(rows), router.label())
            domains: dict[str, dict[str, float]] = {}
            for d in tokens.val:
                chosen = router.for_domain(d, names)
                if chosen is not None:
                    set_library_router(model, chosen)
                    domains.update(evaluate(model, [d]))
            rows.append(_row(router.label(), "library", domains, info, router.to_dict()))
        if info.get("mole"):
            mole = load_lora_experts(load_model(base).model, folder / info["mole"])
            label = f"MoLE joint ({cfg.router_spec()['name']})"
            rows.append(_row(label, "mole", evaluate(mole), info))
        if update is not None:
            update(total, "done")
    result = {"held_in": info["held_in"], "held_out": info["held_out"], "top_k": top_k,
              "rows": rows}  # fmt: skip
    write_json(folder / EVAL_JSON, result)
    return result


def result_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the results table: loss per domain, means, adapters per token."""
    domains = [*result["held_in"], *result["held_out"]]
    header = ["router", *domains, "held-in mean", "held-out mean", "adapters/token"]
    out = []
    for row in result["rows"]:
        cells = [format_number(row["domains"].get(d, {}).get("loss"), ".3f") for d in domains]
        out.append([row["router"], *cells, format_number(row["held_in_loss"], ".3f"),
                    format_number(row["held_out_loss"], ".3f"),
                    format_number(row["adapters_per_token"], ".2f")])  # fmt: skip
    return header, out


def loss_vs_adapters_figure(result: dict[str, Any]) -> Any:
    """Mean loss against adapters used per token, one panel for held-in, one for held-out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in zip(axes, ("held_in_loss", "held_out_loss"),
                              ("held-in domains", "held-out domains"), strict=True):  # fmt: skip
        for row in result["rows"]:
            if row[key] is None or row["adapters_per_token"] is None:
                continue
            marker = {"base": "s", "mole": "D"}.get(row["kind"], "o")
            ax.scatter(row["adapters_per_token"], row[key], marker=marker)
            ax.annotate(row["router"], (row["adapters_per_token"], row[key]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xlabel("adapters (experts) used per token")
        ax.set_ylabel("mean validation loss")
        ax.set_title(title)
    fig.tight_layout()
    return fig


def write_report(folder: Path | str, result: dict[str, Any]) -> Path:
    """``eval.png`` and ``eval.html`` (the table and the plot) in ``folder``."""
    folder = Path(folder)
    png = write_figure(loss_vs_adapters_figure(result), folder / "eval.png")
    header, rows = result_rows(result)
    sections = [
        table(header, rows),
        note(
            f"held-in: {', '.join(result['held_in'])}; held-out (no adapter trained on "
            f"them): {', '.join(result['held_out'])}; top_k {result['top_k']}"
        ),
        figure(png, "Loss vs adapters per token"),
    ]
    return write_page(folder / "eval.html", "Adapter library", sections)
