"""Duo-LLM at toy scale on CPU: oracle vs random patterns vs trained routers, per budget.

    python benchmarks/adaptive.py [--runs benchmarks/runs/adaptive] [--quick]

1. trains ``configs/adaptive_tiny.toml`` with random routing (big / small, p = 0.5);
2. trains linear routers on top (model frozen) for several budget targets;
3. runs the oracle (exhaustive, 2^L and 3^L with skip; each token's pattern applied to
   it alone, every other position big) on validation windows, with R = 100 random
   static patterns per budget and each router's loss;
4. checks the paper's findings and writes ``benchmarks/results/adaptive.json`` and
   ``benchmarks/results/adaptive.png`` (``--report DIR``: also the HTML difficulty report
   of :func:`dynroute.adaptive.report.render_adaptive_report`).
Runs resume (rerun the same command after an interruption). About 5-8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynroute.adaptive import AdaptiveConfig
from dynroute.adaptive.difficulty import difficulty_stats
from dynroute.adaptive.oracle import OracleReport, run_oracle
from dynroute.adaptive.report import render_adaptive_report
from dynroute.adaptive.training import load_adaptive_config, train_adaptive
from dynroute.checkpoints import load_model
from dynroute.common.jsonfile import write_json
from dynroute.data import iter_eval_batches
from dynroute.train import RunConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def train_runs(runs: Path, steps: int, router_steps: int, targets: list[float]) -> dict[str, Any]:
    base = load_adaptive_config(ROOT / "configs" / "adaptive_tiny.toml")
    base.train.steps = steps
    started = time.perf_counter()
    train_adaptive(base, runs / "random", progress=False)
    seconds = {"random": time.perf_counter() - started}
    for target in targets:
        raw = base.to_dict()
        raw["model"].update(
            routing="router",
            init_from=str((runs / "random").resolve()),
            train_routers_only=True,
            budget_target=target,
        )
        raw["train"].update(steps=router_steps, lr=1e-2, min_lr=1e-3, warmup_steps=5)
        cfg = RunConfig.from_dict(raw, model_config=AdaptiveConfig)
        started = time.perf_counter()
        train_adaptive(cfg, runs / f"router-{target}", progress=False)
        seconds[f"router-{target}"] = time.perf_counter() - started
    return seconds


def oracle_of(run: Path, windows: int, skip: bool, num_random: int) -> OracleReport:
    loaded = load_model(run)
    batches = list(iter_eval_batches(loaded.tokens(), 8, loaded.seq_len, -(-windows // 8)))
    return run_oracle(loaded.model, batches, skip=skip, num_random=num_random)  # type: ignore[arg-type]


def findings(main: OracleReport, routers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = {r["budget"]: r for r in main.rows}
    layers = main.layers
    all_big = rows[layers]["random_mean_loss"]
    best_k = min(rows, key=lambda k: rows[k]["oracle_loss"])
    share1 = main.oracle_big_share[1]
    late = int(np.argmax(share1))
    out = [
        {
            "claim": "an oracle with one big layer beats big modules everywhere",
            "holds": rows[1]["oracle_loss"] < all_big,
            "evidence": f"oracle(k=1) {rows[1]['oracle_loss']:.4f} vs all-big {all_big:.4f}",
        },
        {
            "claim": "the best budget is near half the layers",
            "holds": abs(best_k - layers / 2) <= 1 and best_k not in (0, layers),
            "evidence": f"lowest oracle loss at k={best_k} of L={layers}",
        },
        {
            "claim": "with few big layers the oracle favours late layers",
            "holds": late >= layers // 2,
            "evidence": f"k=1, tokens per big layer: {[round(s, 3) for s in share1]}",
        },
    ]
    close, far = [], []
    for r in routers:
        row = rows[r["budget_row"]]
        gap_random = r["router_loss"] - row["random_best_loss"]
        gap_oracle = r["router_loss"] - row["oracle_loss"]
        close.append(abs(gap_random) < 0.5 * gap_oracle)
        far.append(gap_oracle > 2 * abs(gap_random))
    out.append(
        {
            "claim": "trained routers are about as good as the best of 100 random patterns, "
            "far from the oracle",
            "holds": bool(routers) and all(close) and all(far),
            "evidence": "; ".join(
                f"target {r['target']}: router {r['router_loss']:.4f} at {r['big_layers']:.2f} "
                f"big layers, best random {rows[r['budget_row']]['random_best_loss']:.4f}, "
                f"oracle {rows[r['budget_row']]['oracle_loss']:.4f}"
                for r in routers
            ),
        }
    )
    out.append(
        {
            "claim": "earlier positions use big modules more (trained routers)",
            "holds": bool(routers)
            and all(r["big_early_positions"] > r["big_late_positions"] for r in routers),
            "evidence": "; ".join(
                f"target {r['target']}: {r['big_early_positions']:.2f} vs "
                f"{r['big_late_positions']:.2f} big layers (first vs second half of the window)"
                for r in routers
            ),
        }
    )
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8))
    ax, ax2 = fig.subplots(1, 2)
    for key, name, style in (
        ("oracle", "oracle (big/small)", "o-"),
        ("oracle_skip", "oracle (big/small/skip)", "s--"),
    ):
        rows = result[key]["rows"]
        ax.plot([r["budget"] for r in rows], [r["oracle_loss"] for r in rows], style, label=name)
    rows = result["oracle"]["rows"]
    ks = [r["budget"] for r in rows]
    ax.plot(ks, [r["random_mean_loss"] for r in rows], "^:", label="random pattern (mean of 100)")
    ax.plot(ks, [r["random_best_loss"] for r in rows], "v:", label="random pattern (best of 100)")
    for r in result["routers"]:
        ax.plot([r["big_layers"]], [r["router_loss"]], "r*", markersize=12)
    ax.plot([], [], "r*", label="trained routers")
    ax.axhline(result["oracle"]["context_loss"], color="gray", lw=0.8, label="all big")
    ax.set_xlabel("budget k (big layers per token)")
    ax.set_ylabel("validation loss (nats)")
    ax.legend(fontsize=7)
    share = np.array(result["oracle"]["oracle_big_share"])
    im = ax2.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax2.set_xlabel("layer")
    ax2.set_ylabel("budget k")
    ax2.set_title("share of tokens whose oracle runs big here", fontsize=9)
    fig.colorbar(im, ax=ax2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs" / "adaptive")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--router-steps", type=int, default=150)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument(
        "--report", type=Path, default=None, help="also write the HTML difficulty report here"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.router_steps, args.windows, args.targets = 20, 10, 8, [0.5]
    torch.set_num_threads(1)
    started = time.perf_counter()
    seconds = train_runs(args.runs, args.steps, args.router_steps, args.targets)
    main_report = oracle_of(args.runs / "random", args.windows, False, 100)
    skip_report = oracle_of(args.runs / "random", args.windows, True, 100)
    routers = []
    for target in args.targets:
        rep = oracle_of(args.runs / f"router-{target}", args.windows, False, 10)
        row = next(r for r in rep.rows if r["router_loss"] is not None)
        big = rep.router_big.astype(float)  # type: ignore[union-attr]
        early = rep.positions < np.median(rep.positions)
        routers.append(
            {
                "target": target,
                "router_loss": row["router_loss"],
                "big_layers": row["router_big_layers"],
                "budget_row": row["budget"],
                "big_early_positions": float(big[early].mean()),
                "big_late_positions": float(big[~early].mean()),
            }
        )
    loaded = load_model(args.runs / "random")
    counts = np.bincount(np.asarray(loaded.tokens(split="train")))
    result = {
        "config": "configs/adaptive_tiny.toml",
        "steps": args.steps,
        "router_steps": args.router_steps,
        "windows": args.windows,
        "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
        "train_seconds": seconds,
        "oracle": main_report.to_dict(),
        "oracle_skip": skip_report.to_dict(),
        "routers": routers,
        "difficulty": difficulty_stats(main_report, counts),
        "findings": findings(main_report, routers),
        "seconds": time.perf_counter() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "adaptive_quick" if args.quick else "adaptive"
    write_json(RESULTS / f"{name}.json", result)
    plot(result, RESULTS / f"{name}.png")
    if args.report is not None:
        print(render_adaptive_report(main_report, args.report, counts))
    difficulty = {k: v for k, v in result["difficulty"].items() if k != "binned"}
    print(json.dumps({"findings": result["findings"], "routers": result["routers"]}, indent=1))
    print(json.dumps(difficulty, indent=1))
    for r in main_report.rows:
        print(r)


if __name__ == "__main__":
    main()
