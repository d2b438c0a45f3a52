"""Forward latency of a transformers MoE model before and after dynroute.hf.apply_routing.

A tiny-but-not-trivial random OLMoE-like model (no download) runs, interleaved in one
process: the original model (transformers' default experts implementation and its eager
loop), the adapted model at top_k (its own routing, dynroute grouped dispatch) and at
top_p calibrated to ~60% of the model's k. Reports median latency of each and its ratio
to the original; results to benchmarks/results/hf_adapt.json plus a markdown table.

Random weights say nothing about quality: the top-p row measures cost only.

    .venv/bin/python benchmarks/hf_adapt.py            # full run (~30 s)
    .venv/bin/python benchmarks/hf_adapt.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import OlmoeConfig, OlmoeForCausalLM

from dynroute.common.jsonfile import write_json
from dynroute.hf import apply_routing, calibrate_p, remove_routing, reset_routing_stats
from dynroute.hf import routing_stats as stats_of

RESULTS = Path(__file__).parent / "results" / "hf_adapt.json"


def build(args: argparse.Namespace) -> OlmoeForCausalLM:
    """OLMoE layout scaled down: top-k of many small experts, no renormalisation."""
    config = OlmoeConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.expert_ff,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        num_experts=args.experts,
        num_experts_per_tok=args.k,
        norm_topk_prob=False,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = OlmoeForCausalLM(config).eval()
    with torch.no_grad():  # peaked, token-dependent routing like a trained router
        for block in model.model.layers:
            block.mlp.gate.weight.normal_(0.0, 2.0 / args.hidden**0.5)
    return model


def variants(model: OlmoeForCausalLM, p: float) -> dict[str, Any]:
    """name -> function that puts the model into that state (all share the same weights)."""

    def original(impl: str) -> Any:
        def setup() -> None:
            remove_routing(model)
            model.set_experts_implementation(impl)

        return setup

    return {
        "original (transformers grouped_mm)": original("grouped_mm"),
        "original (transformers eager)": original("eager"),
        "dynroute top_k (same routing)": lambda: apply_routing(model, "top_k"),
        f"dynroute top_p (p={p:.4f})": lambda: apply_routing(model, "top_p", p=p),
    }


@torch.no_grad()
def time_forward(model: OlmoeForCausalLM, ids: torch.Tensor) -> float:
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    return time.perf_counter() - start


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = (
        f"OLMoE-like random model: hidden {meta['hidden']}, {meta['layers']} layers, "
        f"{meta['experts']} experts, top-{meta['k']}, expert d_ff {meta['expert_ff']}; "
        f"batch {meta['batch']}×{meta['seq_len']} tokens, {meta['threads']} CPU thread(s), "
        f"{meta['repeats']} interleaved repeats (median, and min as the less noise-prone "
        "number on a shared machine); ratios are against the original grouped_mm model.\n\n"
    )
    lines = [
        "| model | mean experts/token | median ms | ratio vs original | min ms | ratio (min) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['mean_experts']:.2f} | {r['median_ms']:.1f} | "
            f"{r['ratio_vs_original']:.2f}× | {r['min_ms']:.1f} | "
            f"{r['min_ratio_vs_original']:.2f}× |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--expert-ff", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.6, help="top_p target: k·fraction")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small smoke run, not saved")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.layers, args.expert_ff, args.seq_len, args.repeats = 64, 2, 64, 32, 3
    torch.set_num_threads(args.threads)

    model = build(args)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, args.vocab, (args.batch, args.seq_len), generator=gen)
    target = args.k * args.fraction
    # Calibrated on the timed batch itself, so the row shows the compute actually timed.
    cal = calibrate_p(model, ids, target, seq_len=args.seq_len, batch_size=args.batch, tol=0.02)
    print(f"calibrated p={cal.p:.4f}: {cal.mean_experts:.3f} experts/token (target {target})")

    setups = variants(model, cal.p)
    times: dict[str, list[float]] = {name: [] for name in setups}
    experts: dict[str, float] = {}
    for name, setup in setups.items():  # warm-up (first calls are slow), count experts
        setup()
        reset_routing_stats(model)
        for _ in range(args.warmup):
            time_forward(model, ids)
        experts[name] = stats_of(model)["mean_experts"] if "dynroute" in name else float(args.k)
    for _ in range(args.repeats):
        for name, setup in setups.items():
            setup()
            times[name].append(time_forward(model, ids))

    base = statistics.median(times["original (transformers grouped_mm)"])
    base_min = min(times["original (transformers grouped_mm)"])
    rows = [
        {
            "name": name,
            "mean_experts": experts[name],
            "median_ms": 1e3 * statistics.median(ts),
            "min_ms": 1e3 * min(ts),
            "ratio_vs_original": statistics.median(ts) / base,
            "min_ratio_vs_original": min(ts) / base_min,
            "times_ms": [1e3 * t for t in ts],
        }
        for name, ts in times.items()
    ]
    meta = {
        k: getattr(args, k)
        for k in ("hidden", "layers", "heads", "experts", "k", "expert_ff", "vocab", "batch")
    } | {"seq_len": args.seq_len, "repeats": args.repeats, "threads": args.threads}
    table = markdown(rows, meta)
    print(table)
    if args.quick:
        return
    result = {
        "benchmark": "hf_adapt",
        "config": meta,
        "calibrated_p": cal.p,
        "target_experts": target,
        "rows": rows,
        "markdown": table,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "command": "python benchmarks/hf_adapt.py",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
