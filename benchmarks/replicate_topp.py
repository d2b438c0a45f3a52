"""Small-scale replication of "Harder Tasks Need More Experts: Dynamic Routing in MoE Models".

Claim tested: top-p routing (p = 0.4 in the paper) matches or beats top-2 while activating
fewer than 90% of top-2's parameters. We train top-2 and top-p at p in {0.2, 0.3, 0.4, 0.5}
with several seeds on the built-in corpus (configs/demo.toml: same model size, data, token
budget and seed per pair) and report mean ± std of validation loss and experts per token.

    .venv/bin/python benchmarks/replicate_topp.py                      # full: 3 seeds, demo steps
    .venv/bin/python benchmarks/replicate_topp.py --steps 150 --seeds 2   # reduced

Every run is a resumable `dynroute train` folder under --out; rerunning skips finished runs.
Results: benchmarks/results/replicate_topp.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dynroute.train import apply_overrides, load_config
from dynroute.train.compare import Variant, compare_routers

ROOT = Path(__file__).resolve().parents[1]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(
    runs: dict[str, dict[str, Any]], settings: list[str], seeds: list[int]
) -> list[dict[str, Any]]:
    """One row per router setting: mean ± std over seeds, and paired Δ loss vs top-2."""
    rows = []
    for setting in settings:
        per_seed = [runs[f"{setting}-s{s}"] for s in seeds]
        top2 = [runs[f"top2-s{s}"] for s in seeds]
        loss = mean_std([r["val_loss"] for r in per_seed])
        experts = mean_std([r["mean_experts_per_token"] for r in per_seed])
        act = mean_std([r["activated_param_ratio"] for r in per_seed])
        expert_ratio = mean_std([r["expert_param_ratio"] for r in per_seed])
        delta = mean_std(
            [r["val_loss"] - t["val_loss"] for r, t in zip(per_seed, top2, strict=True)]
        )
        se = delta[1] / math.sqrt(len(seeds)) if len(seeds) > 1 else float("nan")
        rows.append(
            {
                "setting": setting,
                "router": per_seed[0]["label"],
                "seeds": seeds,
                "val_loss_mean": loss[0],
                "val_loss_std": loss[1],
                "delta_vs_top2_mean": delta[0],
                "delta_vs_top2_std": delta[1],
                "delta_vs_top2_se": se,
                "experts_per_token_mean": experts[0],
                "experts_per_token_std": experts[1],
                "activated_param_ratio_mean": act[0],
                "activated_param_ratio_std": act[1],
                "expert_param_ratio_mean": expert_ratio[0],
                "expert_param_ratio_std": expert_ratio[1],
                "experts_per_layer_mean": [
                    statistics.fmean(v)
                    for v in zip(*(r["experts_per_layer"] for r in per_seed), strict=True)
                ],
            }
        )
    return rows


def verdict(row: dict[str, Any]) -> str:
    """Does this top-p setting reproduce the claim? (quality within noise, < 90% params)."""
    if row["setting"] == "top2":
        return "reference"
    se = row["delta_vs_top2_se"]
    tol = 2 * se if not math.isnan(se) else 0.01
    quality = row["delta_vs_top2_mean"] <= max(tol, 0.0)
    cheaper = row["activated_param_ratio_mean"] < 0.9
    if quality and cheaper:
        return "agrees"
    if quality:
        return "quality matches, but not cheaper"
    if cheaper:
        return "cheaper, but worse loss"
    return "disagrees"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table (and its settings line) as markdown."""
    lines = [
        f"{len(meta['seeds'])} seeds ({', '.join(map(str, meta['seeds']))}), {meta['steps']} "
        f"steps x {meta['tokens_per_step']} tokens = {meta['train_tokens']:,} training tokens "
        f"per run; {meta['model']}. Validation: {meta['eval_tokens']:,} tokens of held-out "
        "stdlib files. Δ = paired (same seed) difference to top-2, ± its std over seeds.",
        "",
        "| router | val loss | Δ vs top-2 | experts/token | activated params vs top-2 "
        "| expert params vs top-2 | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['router']} | {r['val_loss_mean']:.4f} ± {r['val_loss_std']:.4f} "
            f"| {r['delta_vs_top2_mean']:+.4f} ± {r['delta_vs_top2_std']:.4f} "
            f"| {r['experts_per_token_mean']:.2f} ± {r['experts_per_token_std']:.2f} "
            f"| {r['activated_param_ratio_mean']:.3f} "
            f"| {r['expert_param_ratio_mean']:.3f} | {verdict(r)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.toml"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "replicate_topp"))
    parser.add_argument("--steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--ps", default="0.2,0.3,0.4,0.5", help="top-p thresholds")
    parser.add_argument(
        "--normalized-ps",
        default="",
        help="also run top-p with weights renormalized to sum 1 at these p (diagnostic)",
    )
    parser.add_argument("--final-eval-batches", type=int, default=64)
    parser.add_argument(
        "--results", default=str(ROOT / "benchmarks" / "results" / "replicate_topp.json")
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    base = apply_overrides(load_config(args.config), steps=args.steps, threads=args.threads)
    if base.train.threads:  # the script sets threads; dynroute.train never does
        torch.set_num_threads(base.train.threads)
    ps = [float(p) for p in args.ps.split(",")]
    normalized = [float(p) for p in args.normalized_ps.split(",") if p]
    seeds = list(range(args.seeds))
    settings: dict[str, dict[str, Any]] = {"top2": {"router": "top_k", "k": 2}}
    settings.update({f"top_p{p}": {"router": "top_p", "p": p} for p in ps})
    settings.update(
        {f"top_p{p}-norm": {"router": "top_p", "p": p, "normalize": True} for p in normalized}
    )
    variants = [
        Variant(f"{name}-s{seed}", model, seed)
        for seed in seeds
        for name, model in settings.items()
    ]

    started = time.perf_counter()
    runs = compare_routers(
        base, variants, args.out, args.final_eval_batches, progress=not args.no_progress
    )
    rows = aggregate(runs, list(settings), seeds)
    m, t = base.model, base.train
    first = next(iter(runs.values()))
    meta = {
        "seeds": seeds,
        "steps": t.steps,
        "tokens_per_step": t.tokens_per_step,
        "train_tokens": t.steps * t.tokens_per_step,
        "eval_tokens": first["eval_tokens"],
        "model": (
            f"d_model {m['d_model']}, {m['n_layers']} layers, {m['num_experts']} experts "
            f"(SwiGLU width {m['d_ff']}) in every {m.get('moe_every', 1)} layer(s), "
            f"α={m.get('load_balance_weight')}, β={m.get('dynamic_weight')}"
        ),
    }
    table = markdown(rows, meta)
    payload = {
        "benchmark": "replicate_topp",
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "meta": meta,
        "config": base.to_dict(),
        "rows": [{**r, "verdict": verdict(r)} for r in rows],
        "runs": runs,
        "markdown": table,
        "seconds_this_invocation": time.perf_counter() - started,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "processor": platform.machine(),
        },
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(table)
    print(f"\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
