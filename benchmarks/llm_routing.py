"""AIQ of every query router on the shipped LLM-routing datasets.

Usage: ``python benchmarks/llm_routing.py [--seed 0]``. Fits all routers on each
dataset's train split, sweeps λ on its test split and writes
``benchmarks/results/llm_routing.json`` and the markdown table in BENCHMARKS.md and
docs/llm-routing.md. Takes about a minute on 2 CPU cores.

``python benchmarks/llm_routing.py --embedders tfidf_svd wordllama tfidf_svd+wordllama
--seeds 0 1 2`` compares views of the query instead: every router × embedder on every
dataset over several splits, written to ``benchmarks/results/llm_routing_embedders.json``
(mean AIQ over the seeds, its spread, and the difference to the zero router).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from dynroute.common.jsonfile import write_json
from dynroute.llm import DATASETS, QUERY_ROUTERS, evaluate, load_dataset

RESULTS = Path(__file__).resolve().parent / "results" / "llm_routing.json"
EMBEDDER_RESULTS = RESULTS.with_name("llm_routing_embedders.json")


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


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per router, one AIQ column per dataset (± vs the zero router)."""
    names = list(results)
    head = "| router | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
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
    head = (
        "| router | "
        + " | ".join(f"{n} APGR / CPT50 / CPT80" for n in names)
        + " |\n|---|"
        + "---|" * len(names)
        + "\n"
    )
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
    head = "| router | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols) + "\n"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedders", nargs="+", help="compare these views of the query")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), help="default: all")
    args = parser.parse_args()
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
