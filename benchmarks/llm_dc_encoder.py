"""``dc`` with a fine-tuned encoder vs ``dc`` over a frozen view, on the shipped tables.

Usage: ``python benchmarks/llm_dc_encoder.py [--seeds 0 1 2] [--datasets ...]`` (``--merge
A.json B.json`` joins runs on different datasets into ``--out``). For each
dataset and split seed it fits four ``dc`` variants on the train split and scores AIQ on
the test split (the machinery of ``benchmarks/llm_routing.py``: ``load_dataset`` +
``evaluate``):

- ``frozen tfidf_svd``: the MLP over the default TF-IDF/SVD view;
- ``frozen wordllama``: the MLP over WordLlama's mean-pooled static table;
- ``finetune``: the same MLP over the same table whose rows are trained too
  (``dc:encoder=finetune``);
- ``finetune, table kept``: the fine-tuning recipe (minibatches) with the rows frozen
  (``table_lr=0``), which tells the table's share of any gain from the recipe's.

Writes ``benchmarks/results/llm_dc_encoder.json``: per variant, dataset and seed the AIQ,
its difference to the zero router, the fit time, and for the fine-tuned router the size
of its saved folder. Takes about 25 minutes on one CPU core (``--threads 1``, the default).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dynroute.common.jsonfile import write_json
from dynroute.llm import DATASETS, evaluate, load_dataset, make_query_router

RESULTS = Path(__file__).resolve().parent / "results" / "llm_dc_encoder.json"

#: label -> (router spec, embedder shared by evaluate; None: the router reads the text).
VARIANTS: dict[str, tuple[str, str | None]] = {
    "frozen tfidf_svd": ("dc", "tfidf_svd"),
    "frozen wordllama": ("dc", "wordllama"),
    "finetune": ("dc:encoder=finetune", None),
    "finetune, table kept": ("dc:encoder=finetune,table_lr=0", None),
}


def saved_bytes(spec: str, train: Any, seed: int) -> int:
    """Bytes of the folder a fitted ``spec`` router saves (fits it once more)."""
    router = make_query_router(spec, seed=seed).fit(train)
    with tempfile.TemporaryDirectory() as tmp:
        router.save(tmp)
        return sum(p.stat().st_size for p in Path(tmp).iterdir())


def run(seeds: list[int], datasets: list[str]) -> list[dict[str, Any]]:
    """One row per variant × dataset × seed."""
    rows = []
    for name in datasets:
        for seed in seeds:
            train, test = load_dataset(name, seed=seed)
            for label, (spec, embedder) in VARIANTS.items():
                t0 = time.perf_counter()
                res = evaluate([spec], train, test, seed=seed, embedder=embedder)
                r, zero = res["routers"][0], res["baselines"]["zero_router"]["aiq"]
                rows.append(
                    {
                        "dataset": name,
                        "seed": seed,
                        "variant": label,
                        "spec": spec,
                        "embedder": res["embedder"],
                        "aiq": r["aiq"],
                        "zero_router": zero,
                        "vs_zero_router": r["aiq"] - zero,
                        "oracle": res["baselines"]["oracle"]["aiq"],
                        "fit_seconds": r["fit_seconds"],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(
                    f"{name} seed {seed} {label}: AIQ {r['aiq']:.4f} "
                    f"({r['aiq'] - zero:+.4f} vs zero), fit {r['fit_seconds']:.1f} s",
                    flush=True,
                )
            if seed == seeds[0]:  # the folder's size hardly depends on the split
                mine = next(r for r in rows[-len(VARIANTS) :] if r["variant"] == "finetune")
                mine["saved_bytes"] = saved_bytes(mine["spec"], train, seed)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and variant: mean AIQ, mean difference to the zero router, spread."""
    out = []
    keys = dict.fromkeys((r["dataset"], r["variant"]) for r in rows)
    for dataset, variant in keys:
        mine = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant]
        aiqs = [r["aiq"] for r in mine]
        out.append(
            {
                "dataset": dataset,
                "variant": variant,
                "mean_aiq": sum(aiqs) / len(aiqs),
                "mean_vs_zero_router": sum(r["vs_zero_router"] for r in mine) / len(mine),
                "spread": max(aiqs) - min(aiqs),
                "mean_fit_seconds": sum(r["fit_seconds"] for r in mine) / len(mine),
            }
        )
    return out


def table(summ: list[dict[str, Any]]) -> str:
    """Markdown: one row per variant, per dataset mean AIQ (− zero router) ± half spread."""
    datasets = list(dict.fromkeys(s["dataset"] for s in summ))
    head = "| dc encoder | " + " | ".join(datasets) + " |\n|---|" + "---:|" * len(datasets)
    cell = {(s["dataset"], s["variant"]): s for s in summ}
    lines = [head]
    for variant in VARIANTS:
        vals = [cell[(d, variant)] for d in datasets]
        lines.append(
            f"| {variant} | "
            + " | ".join(
                f"{s['mean_aiq']:.4f} ({s['mean_vs_zero_router']:+.4f}) ±{s['spread'] / 2:.3f}"
                for s in vals
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--merge", nargs="+", type=Path, help="join result files of runs on other datasets"
    )
    args = parser.parse_args()
    if args.merge:  # e.g. two processes, one per dataset group, joined into --out
        parts = [json.loads(p.read_text()) for p in args.merge]
        rows = [r for part in parts for r in part["rows"]]
        joined = {**parts[0], "summary": summary(rows), "rows": rows}
        joined["seconds"] = sum(part["seconds"] for part in parts)
        write_json(args.out, joined, indent=1)
        print(table(joined["summary"]))
        return
    # One thread: the fits are small, and on a shared machine more threads only contend.
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in args.datasets:  # written after each dataset: a long run keeps what it did
        rows += run(args.seeds, [name])
        summ = summary(rows)
        result = {
            "seeds": args.seeds,
            "threads": args.threads,
            "variants": {k: {"spec": s, "embedder": e} for k, (s, e) in VARIANTS.items()},
            "summary": summ,
            "rows": rows,
            "seconds": time.perf_counter() - t0,
        }
        write_json(args.out, result, indent=1)
    print(table(summ))
    print(f"total {result['seconds']:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
