"""MoE layer speed suite: dynroute vs transformers' expert implementations vs the GEMM bound.

    python benchmarks/layer.py                 # --quick grid (E=8, N in {8, 512})
    python benchmarks/layer.py --full          # the whole issue-#7 grid (hours on 2 CPU cores)
    python benchmarks/layer.py --full --experts 8 --tokens 512 4096 --modes fwd+bwd
    python benchmarks/layer.py --device cuda --dtype bfloat16 \
        --out benchmarks/results/layer_cuda.json --chart benchmarks/results/layer_cuda.png

Appends to benchmarks/results/layer.json (cells already there are skipped; --no-resume
re-measures them), redraws benchmarks/results/layer.png and prints the ratio tables
and a markdown summary of the targets. Ratios are measured side by side in one
process, interleaved; absolute times on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# as in dynbench.layer, repeated here so that --thp acts before torch is imported
ROUTERS = ("top2", "top8", "top_p")
MODES = ("fwd", "fwd+bwd")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small grid (default)")
    size.add_argument("--full", action="store_true", help="the whole issue grid")
    ap.add_argument("--experts", type=int, nargs="+", help="restrict E")
    ap.add_argument("--tokens", type=int, nargs="+", help="restrict N")
    ap.add_argument("--routers", nargs="+", choices=ROUTERS)
    ap.add_argument("--modes", nargs="+", choices=MODES)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--d-ff", type=int, default=2816)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 is steadier on a busy box"
    )
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per slow impl per cell")
    ap.add_argument(
        "--thp",
        action="store_true",
        help="THP_MEM_ALLOC_ENABLE=1: torch's CPU allocations of 2 MB+ on transparent huge "
        "pages (far fewer page faults for fresh weight gradients)",
    )
    ap.add_argument("--skip", nargs="+", default=(), help="implementations not to run")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "layer.json")
    ap.add_argument("--chart", type=Path, default=RESULTS / "layer.png")
    args = ap.parse_args()
    if args.thp:  # read by torch's CPU allocator, so set before torch is imported
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    import torch

    from dynbench.layer import FULL, QUICK, Setup, grid
    from dynbench.suite import run_suite

    if {"bound", "floor"} & set(args.skip):
        ap.error("bound and floor are the references every ratio needs; they cannot be skipped")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = FULL if args.full else QUICK
    cells = grid(
        args.experts or base["experts"],
        args.tokens or base["tokens"],
        args.routers or base["routers"],
        args.modes or base["modes"],
    )
    setup = Setup(
        d_model=args.d_model,
        d_ff=args.d_ff,
        device=args.device,
        dtype=args.dtype,
        repeats=args.repeats,
        budget_s=args.budget,
        memory=not args.no_memory,
        skip=tuple(args.skip),
    )
    run_suite(cells, setup, out=args.out, chart=args.chart, resume=not args.no_resume)


if __name__ == "__main__":
    main()
