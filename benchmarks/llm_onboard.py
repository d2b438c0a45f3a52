"""Adding a model from a few labels: leave-one-model-out on LLMRouter's table.

Usage: ``python benchmarks/llm_onboard.py [--routers knn mlp mf] [--labels 10 25 50]
[--seeds 0 1 2]``. For each router with an onboarding form and each of the table's 9
models: fit the router on the training split without that model, add the model back from
10 / 25 / 50 random labelled training queries (3 draws each) with
:func:`dynroute.llm.onboard.add_model`, and score AIQ on the test split against the
router fitted on all models (the full refit) and the router without the model. Every AIQ
shares the normalising cost of the full test table. Writes
``benchmarks/results/llm_onboard.json`` and prints the table. The issue's target: 50
labels within 0.01 AIQ of the full refit. 27 router fits and 243 onboardings: 29 min
on the shared 2-core machine under load (load average 12-20), `seconds` in the JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynroute.common.jsonfile import write_json
from dynroute.llm import baselines, evaluate_router, load_dataset, make_embedder
from dynroute.llm.onboard import add_model
from dynroute.llm.routers import make_query_router
from llm_routing import markdown_head  # benchmarks/: the script's own folder

RESULTS = Path(__file__).resolve().parent / "results" / "llm_onboard.json"
TARGET = 0.01


def held_out(
    router: str, model: str, train: Any, test: Any, base: dict[str, Any], embedder: Any,
    labels: list[int], seeds: list[int], strength: float,
) -> dict[str, Any]:  # fmt: skip
    """One router, one held-out model: AIQ without it and onboarded from each label count."""
    others = [m for m in train.models if m != model]
    without = make_query_router(router).fit(train.select_models(others), embedder)
    j = train.models.index(model)
    row: dict[str, Any] = {
        "model": model,
        "without": evaluate_router(without, test.select_models(others), base)["aiq"],
        "onboarded": {},
    }
    for n in labels:
        aiqs = []
        for seed in seeds:
            idx = np.random.default_rng(seed).choice(train.num_queries, n, replace=False)
            new = add_model(
                without, model, [train.queries[i] for i in idx], train.quality[idx, j],
                train.cost[idx, j], known=train.select_models(others).quality[idx],
                strength=strength,
            )  # fmt: skip
            aiqs.append(evaluate_router(new, test, base)["aiq"])
        row["onboarded"][str(n)] = aiqs
    return row


def run(routers: list[str], labels: list[int], seeds: list[int], strength: float) -> dict:
    train, test = load_dataset("llmrouter")
    base = baselines(test)
    embedder = make_embedder().fit(train.queries)  # the view of the query has no models in it
    out: dict[str, Any] = {"labels": labels, "seeds": seeds, "strength": strength, "routers": {}}
    for router in routers:
        t0 = time.perf_counter()
        full = make_query_router(router).fit(train, embedder)
        res: dict[str, Any] = {"full_refit": evaluate_router(full, test, base)["aiq"], "rows": []}
        for model in train.models:
            print(f"{router}: without {model} ...", flush=True)
            res["rows"].append(
                held_out(router, model, train, test, base, embedder, labels, seeds, strength)
            )
        res["summary"] = summary(res, labels)
        res["seconds"] = time.perf_counter() - t0
        out["routers"][router] = res
    out["zero_router"] = base["zero_router"]["aiq"]
    out["oracle"] = base["oracle"]["aiq"]
    return out


def summary(res: dict[str, Any], labels: list[int]) -> dict[str, Any]:
    """Mean over held-out models of AIQ − full refit: without the model and per label
    count (each model's draws averaged first), and how many models are within the target."""
    full = res["full_refit"]
    out: dict[str, Any] = {
        "without_vs_full": float(np.mean([r["without"] - full for r in res["rows"]]))
    }
    for n in labels:
        gaps = [float(np.mean(r["onboarded"][str(n)])) - full for r in res["rows"]]
        out[str(n)] = {
            "vs_full_mean": float(np.mean(gaps)),
            "vs_full_worst": float(min(gaps)),
            "within_target": sum(g >= -TARGET for g in gaps),
            "models": len(gaps),
        }
    return out


def table(result: dict[str, Any]) -> str:
    """Markdown: per router, full-refit AIQ, then mean AIQ − full refit without the model
    and onboarded from each label count (worst model in brackets, models within 0.01)."""
    labels = result["labels"]
    head = markdown_head(
        ["router", "full refit AIQ", "without the model", *(f"{n} labels" for n in labels)],
        ["---", *["---:"] * (2 + len(labels))],
    )
    lines = []
    for router, res in result["routers"].items():
        s = res["summary"]
        cells = [
            f"{s[str(n)]['vs_full_mean']:+.4f} (worst {s[str(n)]['vs_full_worst']:+.4f}; "
            f"{s[str(n)]['within_target']}/{s[str(n)]['models']} within {TARGET})"
            for n in labels
        ]
        lines.append(
            f"| {router} | {res['full_refit']:.4f} | {s['without_vs_full']:+.4f} | "
            + " | ".join(cells)
            + " |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routers", nargs="+", default=["knn", "mlp", "mf"])
    parser.add_argument("--labels", nargs="+", type=int, default=[10, 25, 50])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the budget is one core
    t0 = time.perf_counter()
    result = run(args.routers, args.labels, args.seeds, args.strength)
    result["seconds"] = time.perf_counter() - t0
    write_json(args.out, result, indent=1)
    print(table(result))
    print(f"total {result['seconds']:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
