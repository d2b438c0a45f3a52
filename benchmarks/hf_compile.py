"""generate() tokens/s of a patched transformers MoE model: torch.compile vs eager.

A random OLMoE-like model (no download) is patched with ``apply_routing(model, "top_k")``
and generates greedily with a static cache, side by side in one process: the eager
forward, and the forward compiled with ``fullgraph=True`` (prefill and decode compile
once in the warm-up; the timed calls recompile nothing, which is checked). The unpatched
model's eager generate is timed too, for reference. Results to
benchmarks/results/hf_compile.json plus a markdown row.

    .venv/bin/python benchmarks/hf_compile.py            # full run (a few minutes on CPU)
    .venv/bin/python benchmarks/hf_compile.py --quick    # smoke run, not saved
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch._dynamo.utils import counters
from transformers import OlmoeForCausalLM

from dynroute.common.jsonfile import write_json
from dynroute.hf import apply_routing
from hf_adapt import build  # the same OLMoE-like model, scaled down

RESULTS = Path(__file__).parent / "results" / "hf_compile.json"


def generator(model: OlmoeForCausalLM, ids: torch.Tensor, new: int) -> Callable[[], Any]:
    """Greedy generate of exactly ``new`` tokens with a static cache."""
    settings = dict(
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        cache_implementation="static",
        pad_token_id=0,
    )
    return lambda: model.generate(ids, **settings)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = (
        f"OLMoE-like random model: hidden {meta['hidden']}, {meta['layers']} layers, "
        f"{meta['experts']} experts, top-{meta['k']}; greedy generate of {meta['new_tokens']} "
        f"tokens after a {meta['prompt']}-token prompt, batch {meta['batch']}, static cache, "
        f"{meta['threads']} CPU thread(s), {meta['repeats']} interleaved repeats (median).\n\n"
    )
    lines = [
        "| model | tokens/s | ratio vs patched eager | warm-up s |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['tokens_per_s']:.1f} | {r['ratio_vs_eager']:.2f}× | "
            f"{r['warmup_s']:.1f} |"
        )
    return head + "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--expert-ff", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small smoke run, not saved")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.layers, args.expert_ff, args.new_tokens, args.repeats = 64, 2, 64, 8, 2
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    original = build(args)
    eager = apply_routing(copy.deepcopy(original), "top_k")
    compiled = apply_routing(copy.deepcopy(original), "top_k")
    compiled.forward = torch.compile(compiled.forward, fullgraph=True)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, args.vocab, (args.batch, args.prompt), generator=gen)
    runs = {
        "unpatched, eager": generator(original, ids, args.new_tokens),
        "patched top_k, eager": generator(eager, ids, args.new_tokens),
        "patched top_k, torch.compile(fullgraph=True)": generator(compiled, ids, args.new_tokens),
    }
    outputs, warmup = {}, {}
    for name, run in runs.items():
        start = time.perf_counter()
        outputs[name] = run()  # compiles prefill and decode for the compiled model
        warmup[name] = time.perf_counter() - start
    names = list(runs)
    same = all(torch.equal(outputs[names[0]], outputs[n]) for n in names)
    counters.clear()
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    recompiles = int(counters["stats"]["unique_graphs"])
    tokens = args.batch * args.new_tokens
    base = tokens / statistics.median(times["patched top_k, eager"])
    rows = []
    for name in runs:
        rate = tokens / statistics.median(times[name])
        rows.append(
            {
                "name": name,
                "tokens_per_s": rate,
                "ratio_vs_eager": rate / base,
                "warmup_s": warmup[name],
                "seconds": times[name],
            }
        )
    meta = {
        **{k: v for k, v in vars(args).items() if k not in ("out", "quick")},
        "new_tokens": args.new_tokens,
        "same_tokens": same,
        "graphs_compiled_after_warmup": recompiles,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
    }
    table = markdown(rows, meta)
    print(table)
    print(f"same generated tokens: {same}; graphs compiled after warm-up: {recompiles}")
    if not args.quick:
        write_json(args.out, {"meta": meta, "rows": rows, "markdown": table})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
