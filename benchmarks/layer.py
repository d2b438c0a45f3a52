"""MoE layer speed suite (`make bench`): `dynroute bench layer`, writing to benchmarks/results/.

    python benchmarks/layer.py                 # --quick grid (E=8, N in {8, 512})
    python benchmarks/layer.py --full          # the whole issue-#7 grid (hours on 2 CPU cores)
    python benchmarks/layer.py --suite gpu     # Mixtral/OLMoE/Qwen3 layers, bf16, CUDA events

The suite is :mod:`dynroute.layers.benchmark` (``--help`` lists every flag); this
script only points its results at this folder's ``results/``.
"""

from __future__ import annotations

from pathlib import Path

from dynroute.layers.benchmark.run import main

if __name__ == "__main__":
    raise SystemExit(main(results=Path(__file__).parent / "results"))
