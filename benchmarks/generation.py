"""Generation tokens/s with and without the KV cache, on small trained runs.

    PYTHONPATH=src python benchmarks/generation.py [--runs DIR] [--threads 1]

Trains (once; kept in --runs) the demo model with 320-token windows for 60 steps, top-2
and top-p (benchmarks/generation_demo.toml), then runs ``dynroute eval RUN --generate
--new-tokens 256 --json`` on each (16-token prompt: 272 tokens fit the window), and
once more with a 128-token prompt, where the last 64 steps pass the 320-token window
(there the cached path restarts its cache every step, as recomputation does). Writes
benchmarks/results/generation.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from dynroute.common.jsonfile import write_json

HERE = Path(__file__).parent
CONFIG = HERE / "generation_demo.toml"
RESULTS = HERE / "results" / "generation.json"
ROUTERS = {"top_k": [], "top_p": ["--router", "top_p"]}


def dynroute(*args: str, threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "dynroute.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def long_prompt(run: Path, tokens: int, new_tokens: int) -> dict:
    """The cached and uncached timing with a prompt of ``tokens`` validation tokens."""
    from dynroute.checkpoints import load_model
    from dynroute.models.generation import generation_speed

    loaded = load_model(run)
    ids = torch.tensor(loaded.tokens(max_tokens=tokens)[:tokens], dtype=torch.long)
    report = generation_speed(loaded.model, ids, new_tokens)
    report.pop("tokens")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/generation"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, dict] = {}
    for router, extra in ROUTERS.items():
        run = args.runs / router
        if not (run / "model" / "config.json").is_file():
            print(f"training {run} ...", flush=True)
            dynroute("train", "--config", str(CONFIG), "--out", str(run), *extra,
                     "--no-progress", threads=args.threads)  # fmt: skip
        out = dynroute("eval", str(run), "--json", "--max-batches", "4", "--generate",
                       "--new-tokens", str(args.new_tokens), threads=args.threads)  # fmt: skip
        ev = json.loads(out)
        results[router] = {
            "router": ev["router"],
            "val_loss": ev["val_loss"],
            "mean_experts_per_token": ev["mean_experts_per_token"],
            "generation": ev["generation"],
            "past_the_window": long_prompt(run, 128, args.new_tokens),
        }
        print(router, json.dumps(results[router]["generation"])[:300], flush=True)
    meta = {"threads": args.threads, "torch": torch.__version__, "config": CONFIG.name,
            "machine": os.uname().machine, "cpus": os.cpu_count()}  # fmt: skip
    write_json(args.out, {"meta": meta, "runs": results}, indent=1)
    print(f"wrote {args.out}\n")
    print("| router | k̄ | prompt + new tokens (window) | tokens/s, KV cache | tokens/s, no cache "
          "| speed-up | same tokens |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---|")
    for r in results.values():
        for g in (r["generation"], r["past_the_window"]):
            print(
                f"| {r['router']} | {r['mean_experts_per_token']:.2f} | "
                f"{g['prompt_tokens']} + {g['new_tokens']} ({g['max_seq_len']}) | "
                f"{g['cache']['tokens_per_second']:.1f} | {g['no_cache']['tokens_per_second']:.1f} "
                f"| {g['speedup']:.2f}× | {'yes' if g['same_tokens'] else 'no'} |"
            )


if __name__ == "__main__":
    main()
