"""Time grouped / loop / dense against the dense-GEMM bound for one MoE layer shape.

    python benchmarks/layer.py [--tokens 512] [--experts 8] [--backward]

Prints seconds and ratios measured side by side in one process and writes
benchmarks/results/layer_smoke.json. (The full speed suite is issue #7.)
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from rich.console import Console

from dynroute.bench.layer import format_table, time_layer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--d-ff", type=int, default=2816)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "layer_smoke.json"
    )
    args = ap.parse_args()
    rows = time_layer(
        args.tokens,
        args.d_model,
        args.d_ff,
        args.experts,
        repeats=args.repeats,
        backward=args.backward,
    )
    Console().print(format_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    args.out.write_text(json.dumps({"meta": meta, "records": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
