"""LoRA experts vs a single LoRA vs one LoRA per domain, on a tiny base trained here.

    python benchmarks/lora.py [--base-steps 300] [--steps 150] [--quick]

1. Pre-trains the tiny DynMoE base with ``dynroute.train`` (configs/tiny.toml, stdlib
   Python source) unless benchmarks/results/lora_runs/base already holds it.
2. Fine-tunes adapters on the attention projections (``qkv``, ``proj``) over the four
   built-in domains of ``dynroute.lora.lora_domains`` (python, docstrings, docs, licenses):
   (a) one LoRA with the trainable parameters of the expert mixtures (rank E·r + 1), ours
       (E = 1, top-k(1)) and the same rank trained through ``peft.get_peft_model``;
   (b) the oracle: one rank-r LoRA per domain, trained and evaluated on its domain only
       (the same total parameters as the mixtures);
   (c) E = 4 LoRA experts of rank r routed per token by top-k(2), top-p(0.5), DynMoLE;
       and SMoRA (rank E·r, its ranks routed by top-k(E·r/2)).
3. Writes benchmarks/results/lora.json, lora.png (each domain's expert share) and prints
   the table of docs/lora.md.
Every variant sees the same number of steps, batch size and sequence length.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from dynroute.common.jsonfile import write_json
from dynroute.lora.data import DOMAINS
from dynroute.lora.train import LoRAConfig, LoRADataConfig, LoRARunConfig, train_lora
from dynroute.train import TrainConfig, apply_overrides, load_config, train

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent
E, R = 4, 4


def train_base(folder: Path, steps: int) -> Path:
    """The tiny DynMoE base (configs/tiny.toml, ``steps`` steps) in ``folder``, trained once:
    a folder whose training finished (``result.ok``) is reused."""
    cfg = apply_overrides(load_config(ROOT / "configs" / "tiny.toml"), steps=steps)
    if not (folder / "model" / "config.json").is_file() or not (folder / "result.ok").is_file():
        train(cfg, folder, progress=False)
        (folder / "result.ok").write_text("ok")
    return folder


def _variants() -> list[tuple[str, LoRAConfig, list[str] | None]]:
    single_rank = E * R + 1  # E·r ranks plus the gate columns: the mixtures' parameter count
    targets = ["qkv", "proj"]
    routed = [
        ("(c) LoRA experts top_k(k=2)", "top_k:k=2", "lora", E, R),
        ("(c) LoRA experts top_p(p=0.5)", "top_p:p=0.5", "lora", E, R),
        ("(c) LoRA experts dynmole", "dynmole", "lora", E, R),
        (f"(c) SMoRA rank {E * R} top_k(k={E * R // 2})", f"top_k:k={E * R // 2}", "smora", 1,
         E * R),
    ]  # fmt: skip
    out: list[tuple[str, LoRAConfig, list[str] | None]] = [
        ("(a) single LoRA", LoRAConfig(targets, 1, single_rank, 2.0 * single_rank, "top_k:k=1"),
         None),
        ("(a) single LoRA via peft",
         LoRAConfig(targets, 1, single_rank, 2.0 * single_rank, "top_k:k=1", "peft"), None),
    ]  # fmt: skip
    for d in DOMAINS:
        out.append((f"(b) oracle LoRA [{d}]", LoRAConfig(targets, 1, R, 2.0 * R, "top_k:k=1"), [d]))
    for name, router, kind, e, r in routed:
        out.append((name, LoRAConfig(targets, e, r, 2.0 * r, router, kind), None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps")
    args = parser.parse_args()
    if args.quick:
        args.base_steps, args.steps = 20, 6
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared box
    started = time.perf_counter()
    runs = RESULTS / ("lora_runs_quick" if args.quick else "lora_runs")
    base = train_base(runs / f"base_{args.base_steps}", args.base_steps)
    train_cfg = TrainConfig(
        steps=args.steps, batch_size=8, seq_len=64, lr=3e-3, min_lr=3e-4, warmup_steps=10,
        weight_decay=0.0, log_interval=25, checkpoint_interval=10**9, eval_batches=None,
        seed=0,
    )  # fmt: skip
    data = LoRADataConfig(max_train_bytes=200_000, max_val_bytes=20_000)
    rows: list[dict[str, Any]] = []
    for name, lora, domains in _variants():
        slug = name.split(" ", 1)[1].replace(" ", "_").replace("[", "").replace("]", "")
        cfg = LoRARunConfig(lora, LoRADataConfig(**{**data.__dict__, "domains": domains}),
                            train_cfg)  # fmt: skip
        folder = runs / f"{slug}_{args.steps}".replace("(", "").replace(")", "").replace(",", "")
        result_file = folder / "result.json"
        if result_file.is_file():
            result = json.loads(result_file.read_text())
        else:
            result = train_lora(cfg, base, folder)
        rows.append({"variant": name, **result})
        print(f"{name}: {time.perf_counter() - started:.0f}s", flush=True)

    # the base alone, per domain (no adapters)
    from dynroute.checkpoints import load_model, tokenize_documents
    from dynroute.lora.data import load_domains
    from dynroute.lora.train import evaluate_domains

    loaded = load_model(base)
    doms = load_domains("builtin", data.max_train_bytes, data.max_val_bytes)
    val = {d: tokenize_documents(loaded.tokenizer, doms[d]["validation"]) for d in DOMAINS}
    base_eval = evaluate_domains(loaded.model, val, 8, 64)

    oracle = {
        r["variant"].split("[")[1][:-1]: r["domains"] for r in rows if "oracle" in r["variant"]
    }
    table: list[dict[str, Any]] = [
        {"variant": "base (no adapter)", "params": 0,
         "loss": {d: base_eval[d]["loss"] for d in DOMAINS}, "k": {}},
        {"variant": "(b) oracle LoRA per domain",
         "params": sum(r["trainable_parameters"] for r in rows if "oracle" in r["variant"]),
         "loss": {d: oracle[d][d]["loss"] for d in DOMAINS}, "k": {}},
    ]  # fmt: skip
    for r in rows:
        if "oracle" in r["variant"]:
            continue
        table.append({
            "variant": r["variant"], "params": r["trainable_parameters"],
            "loss": {d: r["domains"][d]["loss"] for d in DOMAINS},
            "k": {} if r["kind"] == "peft" else
                 {d: r["domains"][d]["experts_per_token"] for d in DOMAINS},
            "share": {d: r["domains"][d]["expert_share"] for d in DOMAINS},
        })  # fmt: skip
    for t in table:
        t["mean_loss"] = sum(t["loss"].values()) / len(DOMAINS)
    ref = next(t for t in table if t["variant"].startswith("(b)"))["mean_loss"]
    single = next(t for t in table if t["variant"] == "(a) single LoRA")["mean_loss"]
    for t in table:
        t["vs_oracle_pct"] = 100 * (t["mean_loss"] - ref) / ref
        t["within_2pct_of_oracle"] = t["vs_oracle_pct"] <= 2.0
        t["better_than_single"] = t["mean_loss"] < single

    out = {
        "machine": platform.platform(), "torch": torch.__version__, "threads": 1,
        "base_steps": args.base_steps, "steps": args.steps, "batch_size": 8, "seq_len": 64,
        "experts": E, "rank": R, "domains": list(DOMAINS), "table": table,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    name = "lora_quick" if args.quick else "lora"
    write_json(RESULTS / f"{name}.json", out)
    _plot(table, RESULTS / f"{name}.png")
    _print(table)


def _markdown(table: list[dict[str, Any]]) -> str:
    head = "| variant | trainable params | " + " | ".join(DOMAINS) + " | mean | vs oracle | " \
        "experts/token (per domain) |"  # fmt: skip
    lines = [head, "|---|---:|" + "---:|" * len(DOMAINS) + "---:|---:|---|"]
    for t in table:
        k = " / ".join(f"{t['k'][d]:.2f}" for d in DOMAINS) if t["k"] else "–"
        losses = " | ".join(f"{t['loss'][d]:.3f}" for d in DOMAINS)
        lines.append(f"| {t['variant']} | {t['params']:,} | {losses} | {t['mean_loss']:.3f} | "
                     f"{t['vs_oracle_pct']:+.1f}% | {k} |")  # fmt: skip
    return "\n".join(lines)


def _print(table: list[dict[str, Any]]) -> None:
    console = Console()
    rich_table = Table("variant", "params", *DOMAINS, "mean", "vs oracle")
    for t in table:
        rich_table.add_row(t["variant"], f"{t['params']:,}",
                           *(f"{t['loss'][d]:.3f}" for d in DOMAINS), f"{t['mean_loss']:.3f}",
                           f"{t['vs_oracle_pct']:+.1f}%")  # fmt: skip
    console.print(rich_table)
    print(_markdown(table))


def _plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routed = [t for t in table if t.get("share") and "SMoRA" not in t["variant"]
              and t["variant"].startswith("(c)")]  # fmt: skip
    fig, axes = plt.subplots(1, len(routed), figsize=(4 * len(routed), 3.2), squeeze=False)
    for ax, t in zip(axes[0], routed, strict=True):
        grid = [t["share"][d] for d in DOMAINS]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(t["variant"].replace("(c) LoRA experts ", ""), fontsize=9)
        ax.set_yticks(range(len(DOMAINS)), DOMAINS, fontsize=8)
        ax.set_xticks(range(len(grid[0])), [f"e{i}" for i in range(len(grid[0]))], fontsize=8)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.5 else "black")  # fmt: skip
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="share of the domain's assignments")
    fig.suptitle("Which LoRA expert each domain uses (mean over wrapped linears)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
