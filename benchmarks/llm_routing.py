"""AIQ of every query router on the shipped LLM-routing datasets.

Usage: ``python benchmarks/llm_routing.py [--seed 0]``. Fits all routers on each
dataset's train split, sweeps λ on its test split and writes
``benchmarks/results/llm_routing.json`` and the markdown table in BENCHMARKS.md and
docs/llm-routing.md. Takes about a minute on 2 CPU cores.

``python benchmarks/llm_routing.py --embedders tfidf_svd wordllama tfidf_svd+wordllama
--seeds 0 1 2`` compares views of the query instead: every router × embedder on every
dataset over several splits, written to ``benchmarks/results/llm_routing_embedders.json``
(mean AIQ over the seeds, its spread, and the difference to the zero router).

``python benchmarks/llm_routing.py --spread`` measures the seed spread of every router
with the default embedder: each shipped table (its train and test rows pooled) is split
again by query — 5 folds where the table is small (under 3,000 queries), else 3 seeded
80/20 splits — and each router's AIQ is reported as mean ± std over the splits, with its
paired difference to the zero router and to ``best_single``; a router whose mean AIQ is
below the zero router's is flagged. Written to
``benchmarks/results/llm_routing_spread.json`` (after every split, so a run cut short
keeps what it finished; ``--merge A.json B.json ...`` joins runs of one table each). About
10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynroute.common.jsonfile import write_json
from dynroute.llm import (
    DATASETS,
    QUERY_ROUTERS,
    OutcomeTable,
    evaluate,
    load_dataset,
    split_by_query,
)

RESULTS = Path(__file__).resolve().parent / "results" / "llm_routing.json"
EMBEDDER_RESULTS = RESULTS.with_name("llm_routing_embedders.json")
SPREAD_RESULTS = RESULTS.with_name("llm_routing_spread.json")
#: Tables with fewer queries are cross-validated in 5 folds; larger ones get 3 splits.
SMALL_TABLE = 3000


def run(
    seed: int = 0, datasets: list[str] | None = None, embedder: str = "tfidf_svd"
) -> dict[str, Any]:
    """``{dataset: evaluate(...) result}`` with the points dropped to keep it small."""
    out: dict[str, Any] = {}
    for name in datasets or list(DATASETS):
        t0 = time.perf_counter()
        train, test = load_dataset(name, seed=seed)
        res = evaluate(sorted(QUERY_ROUTERS), train, test, seed=seed, embedder=embedder)
        res["seconds"] = time.perf_counter() - t0
        out[name] = res
    return out


def markdown_head(columns: Sequence[str], rules: Sequence[str] | None = None) -> str:
    """A Markdown table's header and rule lines (``rules``: one ``---``/``---:`` a column).

    Example:
        >>> markdown_head(["router", "aiq"], ["---", "---:"])
        '| router | aiq |\\n|---|---:|\\n'
    """
    rules = ["---"] * len(columns) if rules is None else rules
    return "| " + " | ".join(columns) + " |\n|" + "".join(f"{r}|" for r in rules) + "\n"


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per router, one AIQ column per dataset (± vs the zero router)."""
    names = list(results)
    head = markdown_head(["router", *names])
    aiqs = {n: {r["router"]: r for r in results[n]["routers"]} for n in names}
    order = sorted(QUERY_ROUTERS, key=lambda r: -sum(aiqs[n][r]["aiq"] for n in names))
    lines = []
    for router in order:
        if router == "oracle":
            continue
        cells = []
        for n in names:
            r, zero = aiqs[n][router], results[n]["baselines"]["zero_router"]["aiq"]
            cells.append(f"{r['aiq']:.4f} ({r['aiq'] - zero:+.4f})")
        lines.append(f"| {router} | " + " | ".join(cells) + " |")
    for label, key in (("zero router", "zero_router"), ("oracle", "oracle")):
        cells = [f"{results[n]['baselines'][key]['aiq']:.4f}" for n in names]
        lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def two_model_table(results: dict[str, Any]) -> str:
    """RouteLLM's metrics on the two-model datasets: APGR, CPT(50%), CPT(80%)."""
    names = [n for n in results if len(results[n]["models"]) == 2]
    head = markdown_head(["router", *(f"{n} APGR / CPT50 / CPT80" for n in names)])
    lines = []
    for router in sorted(QUERY_ROUTERS):
        cells = []
        for n in names:
            r = next(x for x in results[n]["routers"] if x["router"] == router)
            cells.append(f"{r['apgr']:.3f} / {r['cpt50']:.1%} / {r['cpt80']:.1%}")
        lines.append(f"| {router} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def compare_embedders(
    embedders: list[str], seeds: list[int], datasets: list[str] | None = None
) -> dict[str, Any]:
    """``{"rows": [...]}``: per embedder, dataset and router the AIQ on each seed's split,
    its mean, spread (max − min) and the mean difference to the zero router."""
    rows = []
    for emb in embedders:
        per_seed = []
        for seed in seeds:
            print(f"{emb}, seed {seed} ...", flush=True)
            per_seed.append(run(seed, datasets, embedder=emb))
        for name in per_seed[0]:
            zero = [r[name]["baselines"]["zero_router"]["aiq"] for r in per_seed]
            for router in sorted(QUERY_ROUTERS):
                aiqs = [
                    next(x["aiq"] for x in r[name]["routers"] if x["router"] == router)
                    for r in per_seed
                ]
                rows.append(
                    {
                        "embedder": emb,
                        "dataset": name,
                        "router": router,
                        "aiq": aiqs,
                        "mean_aiq": sum(aiqs) / len(aiqs),
                        "spread": max(aiqs) - min(aiqs),
                        "vs_zero_router": sum(a - z for a, z in zip(aiqs, zero, strict=True))
                        / len(aiqs),
                    }
                )
    return {"seeds": seeds, "embedders": embedders, "rows": rows}


def embedder_table(result: dict[str, Any]) -> str:
    """Markdown: one row per router, per dataset one cell per embedder (mean AIQ − zero)."""
    rows = result["rows"]
    embedders, datasets = result["embedders"], list(dict.fromkeys(r["dataset"] for r in rows))
    cols = [f"{d} {e}" for d in datasets for e in embedders]
    head = markdown_head(["router", *cols], ["---", *["---:"] * len(cols)])
    cell = {(r["router"], r["dataset"], r["embedder"]): r for r in rows}
    lines = []
    for router in sorted(QUERY_ROUTERS):
        vals = []
        for d in datasets:
            for e in embedders:
                r = cell[(router, d, e)]
                vals.append(f"{r['vs_zero_router']:+.4f} ±{r['spread'] / 2:.3f}")
        lines.append(f"| {router} | " + " | ".join(vals) + " |")
    return head + "\n".join(lines) + "\n"


def pooled(name: str) -> OutcomeTable:
    """A shipped table with its train and test rows together (to split again)."""
    train, test = load_dataset(name)
    return OutcomeTable.from_rows(
        train.queries + test.queries,
        train.models,
        np.vstack([train.quality, test.quality]),
        np.vstack([train.cost, test.cost]),
        source=f"dataset {name}",
    )


def splits(table: OutcomeTable, seeds: int = 3, folds: int = 5) -> list[tuple[str, Any, Any]]:
    """``[(label, train, test)]``: ``folds`` folds by query (same text, same fold) when the
    table has fewer than :data:`SMALL_TABLE` queries, else ``seeds`` seeded 80/20 splits."""
    if table.num_queries >= SMALL_TABLE:
        return [(f"seed {s}", *split_by_query(table, 0.2, seed=s)) for s in range(seeds)]
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(table.queries):
        groups.setdefault(q.strip(), []).append(i)
    keys = list(groups)
    fold_of = np.empty(table.num_queries, dtype=np.int64)
    for pos, k in enumerate(np.random.default_rng(0).permutation(len(keys))):
        fold_of[groups[keys[k]]] = pos % folds
    return [
        (
            f"fold {f}",
            table.subset(np.flatnonzero(fold_of != f)),
            table.subset(np.flatnonzero(fold_of == f)),
        )
        for f in range(folds)
    ]


def mean_std(xs: list[float]) -> dict[str, float]:
    """``{"mean", "std"}`` (sample std, ddof=1) of ``xs``."""
    a = np.asarray(xs, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def seed_spread(
    datasets: list[str] | None = None,
    on_split: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every router (default embedder) on every table over its splits: AIQ mean ± std,
    paired differences to the zero router and to ``best_single``, and the flags.
    ``on_split(result so far)`` after each split (the benchmark writes it: a run cut short
    keeps the splits it finished)."""
    out: dict[str, Any] = {}
    for name in datasets or list(DATASETS):
        table = pooled(name)
        per_split: list[tuple[str, dict[str, Any]]] = []
        chosen = splits(table)
        for i, (label, train, test) in enumerate(chosen):
            print(f"{name}, {label} ({train.num_queries}/{test.num_queries}) ...", flush=True)
            per_split.append((label, evaluate(sorted(QUERY_ROUTERS), train, test, seed=i)))
            out[name] = summarise(table, per_split, len(chosen))
            if on_split is not None:
                on_split(out)
    return out


def summarise(
    table: OutcomeTable, per_split: list[tuple[str, dict[str, Any]]], planned: int
) -> dict[str, Any]:
    """One table's entry of :func:`seed_spread` from the ``evaluate`` results of its splits."""
    zero = [r["baselines"]["zero_router"]["aiq"] for _, r in per_split]
    aiq = {
        router: [
            next(x["aiq"] for x in r["routers"] if x["router"] == router) for _, r in per_split
        ]
        for router in sorted(QUERY_ROUTERS)
    }
    rows = {}
    for router, xs in aiq.items():
        vs_zero = [a - z for a, z in zip(xs, zero, strict=True)]
        vs_best = [a - b for a, b in zip(xs, aiq["best_single"], strict=True)]
        rows[router] = {
            "aiq": xs,
            **{f"aiq_{k}": v for k, v in mean_std(xs).items()},
            **{f"vs_zero_router_{k}": v for k, v in mean_std(vs_zero).items()},
            **{f"vs_best_single_{k}": v for k, v in mean_std(vs_best).items()},
            "below_zero_router": float(np.mean(vs_zero)) < 0,
            "splits_below_zero_router": sum(d < 0 for d in vs_zero),
        }
    return {
        "queries": table.num_queries,
        "models": list(table.models),
        "splits": [label for label, _ in per_split],
        "planned_splits": planned,
        "embedder": per_split[0][1]["embedder"],
        "seconds": sum(
            r["fit_seconds"] + r["eval_seconds"] for _, res in per_split for r in res["routers"]
        ),
        "zero_router": {"aiq": zero, **mean_std(zero)},
        "oracle": mean_std([r["baselines"]["oracle"]["aiq"] for _, r in per_split]),
        "routers": rows,
    }


def spread_table(result: dict[str, Any]) -> str:
    """Markdown: per router and table, AIQ mean ± std, Δ zero router, Δ best_single; ⚠ marks
    a mean below the zero router."""
    names = list(result)
    head = markdown_head(["router", *(f"{n} AIQ / Δ zero / Δ best_single" for n in names)])
    lines = []
    for router in sorted(QUERY_ROUTERS, key=lambda r: -result[names[0]]["routers"][r]["aiq_mean"]):
        if router == "oracle":  # its own row below, with the zero router
            continue
        cells = []
        for n in names:
            r = result[n]["routers"][router]
            flag = " ⚠" if r["below_zero_router"] else ""
            cells.append(
                f"{r['aiq_mean']:.4f} ±{r['aiq_std']:.4f} / "
                f"{r['vs_zero_router_mean']:+.4f} ±{r['vs_zero_router_std']:.4f} / "
                f"{r['vs_best_single_mean']:+.4f}{flag}"
            )
        lines.append(f"| {router} | " + " | ".join(cells) + " |")
    for key in ("zero_router", "oracle"):
        cells = [f"{result[n][key]['mean']:.4f} ±{result[n][key]['std']:.4f}" for n in names]
        lines.append(f"| **{key.replace('_', ' ')}** | " + " | ".join(cells) + " |")
    splits_line = "; ".join(
        f"{n}: {len(result[n]['splits'])} of {result[n]['planned_splits']} "
        f"{result[n]['splits'][0].split()[0]}s"
        for n in names
    )
    return head + "\n".join(lines) + f"\n\nSplits — {splits_line}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedders", nargs="+", help="compare these views of the query")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), help="default: all")
    parser.add_argument("--spread", action="store_true", help="AIQ mean ± std over splits")
    parser.add_argument("--out", type=Path, default=SPREAD_RESULTS, help="--spread's JSON")
    parser.add_argument(
        "--merge", nargs="+", type=Path, help="--spread: join these JSONs (one per table)"
    )
    args = parser.parse_args()
    if args.spread:
        t0 = time.perf_counter()
        if args.merge:
            parts = [json.loads(p.read_text()) for p in args.merge]
            spread = {k: v for p in parts for k, v in p["results"].items()}
            for res in spread.values():  # files written before planned_splits was kept
                res.setdefault("planned_splits", len(res["splits"]))
            total = sum(p["seconds"] for p in parts)
        else:

            def save(so_far: dict[str, Any]) -> None:
                elapsed = time.perf_counter() - t0
                write_json(args.out, {"seconds": elapsed, "results": so_far}, indent=1)

            spread = seed_spread(args.datasets, save)
            total = time.perf_counter() - t0
        write_json(args.out, {"seconds": total, "results": spread}, indent=1)
        print(spread_table(spread))
        below = [
            f"{router} on {n}"
            for n, res in spread.items()
            for router, r in res["routers"].items()
            if r["below_zero_router"]
        ]
        print("below the zero router (mean AIQ):", ", ".join(below) or "none")
        print(f"total {total:.1f} s; wrote {args.out}")
        return
    if args.embedders:
        t0 = time.perf_counter()
        result = compare_embedders(args.embedders, args.seeds, args.datasets)
        result["seconds"] = time.perf_counter() - t0
        write_json(EMBEDDER_RESULTS, result, indent=1)
        print(embedder_table(result))
        print(f"total {result['seconds']:.1f} s; wrote {EMBEDDER_RESULTS}")
        return
    t0 = time.perf_counter()
    results = run(args.seed)
    total = time.perf_counter() - t0
    for res in results.values():
        for r in res["routers"]:
            r.pop("points")  # the JSON keeps the scores; `dynroute llm eval --json` has points
    write_json(RESULTS, {"seed": args.seed, "seconds": total, "results": results}, indent=1)
    print(table(results))
    print(two_model_table(results))
    print(f"total {total:.1f} s; wrote {RESULTS}")


if __name__ == "__main__":
    main()
