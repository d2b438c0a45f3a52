"""Small-scale replication of "Harder Tasks Need More Experts: Dynamic Routing in MoE Models".

Claim tested: top-p routing (p = 0.4 in the paper) matches or beats top-2 while activating
fewer than 90% of top-2's parameters. We train top-2 and top-p at p in {0.2, 0.3, 0.4, 0.5}
with several seeds on the built-in corpus (configs/demo.toml: same model size, data, token
budget and seed per pair) and report mean ± std of validation loss and experts per token.

    .venv/bin/python benchmarks/replicate_topp.py                      # full: 3 seeds, demo steps
    .venv/bin/python benchmarks/replicate_topp.py --steps 150 --seeds 2   # reduced

The runs go through the frontier engine (:func:`dynroute.frontier.runs.run_frontier`): every
run is a resumable `dynroute train` folder under --out, named as `dynroute bench frontier`
names it (`top_k-k2-s0`, `top_p-p0.4-s0`, `top_p-p0.4-normalizeTrue-s0`); rerunning
skips finished runs and resumes interrupted ones. Each run
is evaluated once, at its last step, on --final-eval-batches held-out batches (the config's
`[train] eval_batches`). Results: benchmarks/results/replicate_topp.json and a markdown
table on stdout.

Changes since the `dynroute.train.compare` version (same JSON keys otherwise):
- top-1 (`top_k:k=1,normalize=false`, setting `top1`) is trained too: the engine needs two
  top-k points, the ends of the top-k compute–quality frontier. Each top-p row gets
  `frontier_verdict` (below / above / on / one seed / outside that frontier, see
  :func:`dynroute.frontier.verdict.judge`; None for top-k rows) and the table a column
  for it.
- run folders have the names above (the old `top2-s0`, `top_p0.4-s0` are not reused);
  `runs` stays keyed `<setting>-s<seed>`, each entry the run's final `eval` row of
  `metrics.jsonl` plus `router` / `label` (router text), `seed`, `train_tokens`,
  `train_tokens_per_second`, `run_dir`, and from the engine `router_spec` (the router as
  `{"name": ...}`), `expert_flops`, `reused`, `train_seconds`; the `checkpoint` and
  `kind` keys of the old evaluation are gone; no intermediate evaluations are run.
- a finished run is not re-evaluated: another --steps or --final-eval-batches needs a new
  --out (the engine refuses a run folder trained with another config, naming it).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dynroute.common.jsonfile import write_json
from dynroute.frontier.runs import run_frontier
from dynroute.frontier.sweep import Point, point_from_text
from dynroute.frontier.verdict import judge
from dynroute.train import RunConfig, apply_overrides, load_config, read_metrics

ROOT = Path(__file__).resolve().parents[1]
TOP_K = ("top1", "top2")  # the frontier's ends; top-2 is the claim's reference


def settings(ps: list[float], normalized: list[float]) -> dict[str, Point]:
    """Setting name (the key of ``rows`` and ``runs``) -> the router point it trains.

    Example:
        >>> points = settings([0.4], [0.4])
        >>> list(points)
        ['top1', 'top2', 'top_p0.4', 'top_p0.4-norm']
        >>> [p.name for p in points.values()]
        ['top_k-k1-normalizeFalse', 'top_k-k2', 'top_p-p0.4', 'top_p-p0.4-normalizeTrue']
    """
    # top-1 unnormalised, as the frontier sweep trains it: a single expert's weight
    # renormalised is always 1, and the router would get no gradient
    points = {
        "top1": Point("top_k", {"name": "top_k", "k": 1, "normalize": False}),
        "top2": Point("top_k", {"name": "top_k", "k": 2}),
    }
    points.update({f"top_p{p}": point_from_text(f"top_p:p={p}") for p in ps})
    points.update(
        {f"top_p{p}-norm": point_from_text(f"top_p:p={p},normalize=true") for p in normalized}
    )
    return points


def run_entry(rec: dict[str, Any], steps: int) -> dict[str, Any]:
    """One run's numbers: its final ``eval`` row of metrics.jsonl and the engine's record."""
    metrics = Path(rec["run_dir"]) / "metrics.jsonl"
    finals = [r for r in read_metrics(metrics, "eval") if r.get("step") == steps]
    if not finals:
        raise RuntimeError(f"{metrics}: no evaluation at step {steps}")
    rates = [r["tokens_per_second"] for r in read_metrics(metrics, "train")]
    entry = {k: v for k, v in finals[-1].items() if k not in ("kind", "step", "tokens")}
    return {
        **entry,
        "router": rec["label"],
        "label": rec["label"],
        "seed": rec["seed"],
        "train_tokens": rec["train_tokens"],
        "train_tokens_per_second": statistics.median(rates) if rates else math.nan,
        "run_dir": rec["run_dir"],
        "router_spec": rec["router"],
        "expert_flops": rec["expert_flops"],
        "reused": rec["reused"],
        "train_seconds": rec["train_seconds"],
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value).

    Example:
        >>> mean_std([1.0, 3.0])
        (2.0, 1.4142135623730951)
    """
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(
    runs: dict[str, dict[str, Any]],
    names: list[str],
    seeds: list[int],
    frontier: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per router setting: mean ± std over seeds, and paired Δ loss vs top-2
    (``frontier``: setting -> its verdict against the top-k frontier)."""
    rows = []
    for setting in names:
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
                "frontier_verdict": (frontier or {}).get(setting),
            }
        )
    return rows


def verdict(row: dict[str, Any]) -> str:
    """Does this top-p setting reproduce the claim? (quality within noise, < 90% params)."""
    if row["setting"] in TOP_K:
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
        f"per run; {meta['model']}. Validation: the same {meta['eval_tokens']:,} held-out "
        "tokens for every run (windows evenly spaced over the validation split of the stdlib "
        "corpus). Δ = paired (same seed) difference to top-2, ± its std over seeds. "
        "Frontier: the line through top-1 and top-2 in loss vs expert FLOPs per token.",
        "",
        "| router | val loss | Δ vs top-2 | experts/token | activated params vs top-2 "
        "| expert params vs top-2 | verdict | vs top-k frontier |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['router']} | {r['val_loss_mean']:.4f} ± {r['val_loss_std']:.4f} "
            f"| {r['delta_vs_top2_mean']:+.4f} ± {r['delta_vs_top2_std']:.4f} "
            f"| {r['experts_per_token_mean']:.2f} ± {r['experts_per_token_std']:.2f} "
            f"| {r['activated_param_ratio_mean']:.3f} "
            f"| {r['expert_param_ratio_mean']:.3f} | {verdict(r)} "
            f"| {r['frontier_verdict'] or '—'} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    parser.add_argument(
        "--final-eval-batches", type=int, default=64, help="held-out batches of the evaluation"
    )
    parser.add_argument(
        "--results", default=str(ROOT / "benchmarks" / "results" / "replicate_topp.json")
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.points = settings(
            [float(p) for p in args.ps.split(",")],
            [float(p) for p in args.normalized_ps.split(",") if p],
        )
    except (TypeError, ValueError) as err:
        parser.error(f"--ps / --normalized-ps: {err}")
    return args


def describe(base: RunConfig, seeds: list[int], eval_tokens: int) -> dict[str, Any]:
    """The ``meta`` block: seeds, token budget, evaluation size, model."""
    m, t = base.model, base.train
    return {
        "seeds": seeds,
        "steps": t.steps,
        "tokens_per_step": t.tokens_per_step,
        "train_tokens": t.steps * t.tokens_per_step,
        "eval_tokens": eval_tokens,
        "model": (
            f"d_model {m['d_model']}, {m['n_layers']} layers, {m['num_experts']} experts "
            f"(SwiGLU width {m['d_ff']}) in every {m.get('moe_every', 1)} layer(s), "
            f"α={m.get('load_balance_weight')}, β={m.get('dynamic_weight')}"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = apply_overrides(
        load_config(args.config),
        steps=args.steps,
        threads=args.threads,
        eval_batches=args.final_eval_batches,
    )
    if base.train.threads:  # the script sets threads; dynroute.train never does
        torch.set_num_threads(base.train.threads)
    seeds = list(range(args.seeds))
    points: dict[str, Point] = args.points

    started = time.perf_counter()
    try:
        records = run_frontier(
            base, list(points.values()), seeds, args.out, progress=not args.no_progress
        )
    except ValueError as err:  # a setting the engine refuses, before any training
        raise SystemExit(f"error: {err}") from None
    setting_of = {p.name: name for name, p in points.items()}
    runs = {
        f"{setting_of[r['name']]}-s{r['seed']}": run_entry(r, base.train.steps) for r in records
    }
    frontier = {setting_of[j.summary.name]: j.verdict for j in judge(records)}
    rows = aggregate(runs, list(points), seeds, frontier)
    meta = describe(base, seeds, next(iter(runs.values()))["eval_tokens"])
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
    write_json(Path(args.results), payload)
    print(table)
    print(f"\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
