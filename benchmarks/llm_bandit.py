"""A model added to a fitted query router with no outcomes: LinUCB explores it online.

Usage: ``python benchmarks/llm_bandit.py [--dataset llmrouter] [--seeds 0 1 2]
[--budget 50] [--alpha 0.2]``. For each model of the dataset in turn (leave one model
out): arms are fitted offline on the train split's outcomes of the other models, the held
out model arrives with none, and the test queries stream in (a shuffled order per seed;
each answer's quality and cost revealed only for the model picked). Reward per query:
``quality − λ·cost`` with λ = 0.5 / the dearest model's mean cost (paying that cost is
worth half a point of quality). Beside the bandit, on the same stream: the router fitted
offline without the new model, the one fitted offline on every model (a full refit with
all the train outcomes, the reference the bandit chases), and the per-query oracle.
Writes ``benchmarks/results/llm_bandit.json`` and ``llm_bandit.png`` (cumulative regret
against the full refit as queries arrive).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from dynroute.common.html import write_figure
from dynroute.common.jsonfile import write_json
from dynroute.llm import load_dataset, make_embedder
from dynroute.llm.bandit import reward_matrix, simulate

RESULTS = Path(__file__).resolve().parent / "results" / "llm_bandit.json"


def run(dataset: str, seeds: list[int], budget: int, alpha: float) -> dict[str, Any]:
    """Leave-one-model-out streams: per model and seed, ``simulate``'s summary and curve."""
    train, test = load_dataset(dataset)
    emb = make_embedder().fit(train.queries)
    tx, sx = emb.encode(train.queries).double().numpy(), emb.encode(test.queries).double().numpy()
    lam = 0.5 / float(train.cost.mean(0).max())
    tr = reward_matrix(train.quality, train.cost, lam)
    te = reward_matrix(test.quality, test.cost, lam)
    rows = []
    for new in range(train.num_models):
        for seed in seeds:
            order = np.random.default_rng(seed).permutation(len(sx))
            res = simulate(tx, tr, sx[order], te[order], new, alpha=alpha, explore_budget=budget)
            regret = np.cumsum(res.rewards["offline_all"] - res.rewards["bandit"])
            rows.append(
                {"new_model": train.models[new], "seed": seed, **res.summary(),
                 "share_best_for_new": float((te[order].argmax(1) == new).mean()),
                 "regret_curve": regret[:: max(1, len(regret) // 100)].tolist()}
            )  # fmt: skip
    return {"dataset": dataset, "lambda": lam, "budget": budget, "alpha": alpha,
            "queries": len(sx), "seeds": seeds, "rows": rows}  # fmt: skip


def table(result: dict[str, Any]) -> str:
    """Markdown: per new model, mean reward of each policy (mean over seeds)."""
    rows = result["rows"]
    pols = ["bandit", "offline_without", "offline_all", "oracle"]
    head = "| new model | best for | " + " | ".join(pols) + " | new model's pulls | explored |"
    head += "\n|---|---:|" + "---:|" * (len(pols) + 2)
    lines = [head]
    for m in dict.fromkeys(r["new_model"] for r in rows):
        mine = [r for r in rows if r["new_model"] == m]
        cells = [f"{np.mean([r['mean_reward'][p] for r in mine]):.4f}" for p in pols]
        pulls = np.mean([r["new_model_pulls"] for r in mine])
        explored = np.mean([r["explored"] for r in mine])
        best = np.mean([r["share_best_for_new"] for r in mine])
        lines.append(f"| {m} | {best:.1%} | " + " | ".join(cells)
                     + f" | {pulls:.0f} | {explored:.0f} |")  # fmt: skip
    mean = {p: np.mean([r["mean_reward"][p] for r in rows]) for p in pols}
    lines.append("| **mean** | | " + " | ".join(f"{mean[p]:.4f}" for p in pols) + " | | |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Cumulative regret against the full offline refit, one line per new model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    rows = result["rows"]
    for m in dict.fromkeys(r["new_model"] for r in rows):
        curves = np.array([r["regret_curve"] for r in rows if r["new_model"] == m])
        steps = np.linspace(0, result["queries"], curves.shape[1])
        ax.plot(steps, curves.mean(0), label=m, lw=1.2)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("queries streamed")
    ax.set_ylabel("cumulative regret vs full refit")
    ax.set_title(f"LinUCB adds a model online ({result['dataset']}, budget {result['budget']})")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    write_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="llmrouter")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.2)
    args = parser.parse_args()
    t0 = time.perf_counter()
    result = run(args.dataset, args.seeds, args.budget, args.alpha)
    result["seconds"] = time.perf_counter() - t0
    write_json(RESULTS, result, indent=1)
    plot(result, RESULTS.with_suffix(".png"))
    print(table(result))
    print(f"total {result['seconds']:.1f} s; wrote {RESULTS}")


if __name__ == "__main__":
    main()
