r"""MoE layer speed suite: dynroute vs transformers' expert implementations vs the GEMM bound.

    python benchmarks/layer.py                 # --quick grid (E=8, N in {8, 512}); `make bench`
    python benchmarks/layer.py --full          # the whole issue-#7 grid (hours on 2 CPU cores)
    python benchmarks/layer.py --full --num-experts 8 --tokens 512 4096 --modes fwd+bwd
    python benchmarks/layer.py --device cuda --dtype bfloat16 \
        --out benchmarks/results/layer_cuda.json --chart benchmarks/results/layer_cuda.png
    python benchmarks/layer.py --suite gpu     # Mixtral/OLMoE/Qwen3 layers, bf16, CUDA events
    python benchmarks/layer.py --suite gpu --dry-run               # list those cells

Appends to RESULTS/layer.json (--results, default benchmarks/results; cells already there
are skipped; --no-resume re-measures them), redraws RESULTS/layer.png and prints the ratio
tables and a markdown summary of the targets. Ratios are measured side by side in one
process, interleaved; absolute times on a shared machine are noisy. The suite's code is
the `dynbench` package beside this script (a source checkout only: not in the wheel).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# as in dynbench.cells, repeated here so that building the parser imports no torch
ROUTERS = ("top2", "top8", "top_p")
MODES = ("fwd", "fwd+bwd")
THP = "THP_MEM_ALLOC_ENABLE"
LEGEND = (
    "✅ / ❌ in the layer tables: ✅ when dynroute's time for a cell (forward, or forward + "
    "backward) is within the target multiple of the *bound*, the time of one dense SwiGLU "
    "GEMM chain over the same A = N·k̄ routed rows (arithmetic no MoE layer can avoid): "
    "≤ 1.10 × for N ≥ 512 tokens, ≤ 1.5 × below; ❌ otherwise. '× floor' compares with the "
    "per-expert GEMMs alone on pre-sorted rows (what any grouped dispatch must run), "
    "'× best hf' with the fastest transformers expert implementation measured in the same "
    "cell (below 1 = dynroute faster)."
)


def parser() -> argparse.ArgumentParser:
    """The suite's flags.

    Example:
        >>> parser().parse_args(["--tokens", "8", "512"]).tokens
        [8, 512]
    """
    ap = argparse.ArgumentParser(
        description=__doc__, epilog=LEGEND, formatter_class=argparse.RawTextHelpFormatter
    )
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small grid (default)")
    size.add_argument("--full", action="store_true", help="the whole issue grid")
    ap.add_argument("--num-experts", type=int, nargs="+", help="restrict E")
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
        help=f"{THP}=1: torch's CPU allocations of 2 MB+ on transparent huge "
        "pages (far fewer page faults for fresh weight gradients)",
    )
    ap.add_argument("--skip", nargs="+", default=(), help="implementations not to run")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument(
        "--results", type=Path, default=RESULTS, help="folder of the default --out and --chart"
    )
    ap.add_argument("--out", type=Path, default=None, help="default: RESULTS/layer.json")
    ap.add_argument("--chart", type=Path, default=None, help="default: RESULTS/layer.png")
    gpu = ap.add_argument_group("the GPU suite (released models' MoE layers)")
    gpu.add_argument("--suite", choices=("grid", "gpu"), default="grid")
    gpu.add_argument("--shapes", nargs="+", help="mixtral, olmoe, qwen3_30b_a3b (default: all)")
    gpu.add_argument("--scale", type=int, default=1, help="divide d_model and d_ff (CPU tests)")
    gpu.add_argument("--dry-run", action="store_true", help="list the cells, run nothing")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite with command-line flags ``argv`` (default ``sys.argv[1:]``); exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    args = ap.parse_args(argv)
    if args.thp and os.environ.get(THP) != "1":
        # read by torch's CPU allocator when torch is imported: rerun with it set
        return subprocess.call([sys.executable, __file__, *argv], env={**os.environ, THP: "1"})
    if args.suite == "gpu":
        try:
            shapes, device = gpu_plan(args)
        except ValueError as err:
            ap.error(str(err))
        run_gpu_suite(args, shapes, device)
        if not args.dry_run:
            print(LEGEND)
        return 0
    if {"bound", "floor"} & set(args.skip):
        ap.error("bound and floor are the references every ratio needs; they cannot be skipped")
    import torch

    from dynbench.cells import FULL, QUICK, Setup, grid
    from dynbench.suite import run_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    base = FULL if args.full else QUICK
    cells = grid(
        args.num_experts or base["experts"],
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
    out = args.out or args.results / "layer.json"
    chart = args.chart or args.results / "layer.png"
    run_suite(cells, setup, out=out, chart=chart, resume=not args.no_resume)
    print(LEGEND)
    return 0


def gpu_plan(args: argparse.Namespace) -> tuple[list[str], str]:
    """(model shapes, device) of ``--suite gpu``; ValueError for unknown shapes or no CUDA."""
    import torch

    from dynbench.gpu_shapes import GPU_SHAPES

    shapes = args.shapes or list(GPU_SHAPES)
    unknown = sorted(set(shapes) - set(GPU_SHAPES))
    if unknown:
        raise ValueError(f"unknown --shapes {unknown}; choose from {', '.join(GPU_SHAPES)}")
    # the suite is for GPUs; --scale shrinks it to test its code on the --device given
    device = "cuda" if args.device == "cpu" and args.scale == 1 else args.device
    if torch.device(device).type == "cuda" and not args.dry_run and not torch.cuda.is_available():
        raise ValueError("--suite gpu needs CUDA (none found); --dry-run lists its cells")
    return shapes, device


def run_gpu_suite(args: argparse.Namespace, shapes: list[str], device: str) -> None:
    """``--suite gpu``: each model shape's cells with its own widths (see dynbench.gpu_shapes)."""
    from dynbench.gpu_shapes import GPU_TOKENS, gpu_cells, gpu_setup
    from dynbench.suite import run_suite

    out = args.out or args.results / "layer_gpu.json"
    for name in shapes:
        setup = gpu_setup(name, device, args.repeats, budget_s=args.budget)
        setup = dataclasses.replace(
            setup, d_model=setup.d_model // args.scale, d_ff=setup.d_ff // args.scale,
            skip=(*setup.skip, *args.skip),
        )  # fmt: skip
        cells = gpu_cells(name, tuple(args.tokens or GPU_TOKENS))
        if args.dry_run:
            for c in cells:
                widths = f"d_model={setup.d_model} d_ff={setup.d_ff} {setup.dtype} {device}"
                print(f"{name}: {c.router} E={c.num_experts} N={c.tokens} {c.mode} {widths}")
            continue
        run_suite(cells, setup, out=out, chart=None, resume=not args.no_resume)


if __name__ == "__main__":
    raise SystemExit(main())
