"""Where torch.compile breaks the graph of one DynMoE block (routing + dispatch), per router.

Runs ``torch._dynamo.explain`` on a block of a small DynMoE model, forward only (the
backward graph follows the forward's breaks), for each router and compute dtype, and
lists every distinct break with its source line and reason. The result feeds the
"compile" section of docs/training.md.

    PYTHONPATH=src python benchmarks/compile_breaks.py            # CPU, a few seconds each
    PYTHONPATH=src python benchmarks/compile_breaks.py --device cuda

Writes benchmarks/results/compile_breaks.json (or --out).
"""

from __future__ import annotations

import argparse
import platform
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from dynroute.common.jsonfile import write_json
from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from dynroute.models.modeling import rope_tables

ROUTERS = {"top_k": {"router": "top_k", "k": 2}, "top_p": {"router": "top_p", "p": 0.4}}


def _where(frame: Any) -> str:
    name = frame.filename.split("src/")[-1]
    return f"{name}:{frame.lineno}"


def explain_block(router: str, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """Graph count, break count and the distinct breaks of one block's forward."""
    cfg = DynMoEConfig(
        vocab_size=256, d_model=64, n_layers=1, n_heads=4, d_ff=128, num_experts=8,
        **ROUTERS[router],
    )  # fmt: skip
    torch.manual_seed(0)
    block = DynMoEForCausalLM(cfg).blocks[0].to(device)
    x = torch.randn(4, 64, 64, device=device)
    cos, sin = (t.to(device) for t in rope_tables(16, 64, 10000.0))
    torch._dynamo.reset()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        report = torch._dynamo.explain(block)(x, cos, sin)
    breaks: Counter[tuple[str, str]] = Counter()
    for item in report.break_reasons:
        reason = str(item.reason).split("\n")[0].strip()[:160]
        breaks[(_where(item.user_stack[-1]) if item.user_stack else "?", reason)] += 1
    return {
        "router": router,
        "dtype": str(dtype).removeprefix("torch."),
        "graphs": report.graph_count,
        "graph_breaks": report.graph_break_count,
        "breaks": [
            {"at": at, "reason": reason, "count": n} for (at, reason), n in sorted(breaks.items())
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compile_breaks.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [
        explain_block(router, dtype, device)
        for router in ROUTERS
        for dtype in (torch.float32, torch.bfloat16)
    ]
    for row in rows:
        print(f"{row['router']:6s} {row['dtype']:9s} graphs {row['graphs']:3d}  "
              f"breaks {row['graph_breaks']:3d}")  # fmt: skip
        for b in row["breaks"]:
            print(f"    {b['count']:2d} x {b['at']}: {b['reason']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "device": str(device), "machine": platform.machine()}
    write_json(args.out, {"meta": meta, "blocks": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
