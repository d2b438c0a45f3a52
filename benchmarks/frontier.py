"""The compute–quality frontier: validation loss vs active expert FLOPs per token.

A thin wrapper over ``dynroute bench frontier`` that writes its results where the docs
read them (benchmarks/results/frontier.json and frontier.png; every run's table and
verdict show each router at its final k̄ and at its mean k̄ over training):

    python benchmarks/frontier.py --routers top_k,top_p:p=0.4,top_p_normalized,null_experts \\
        --targets 1.5,2 --seeds 3 --steps 60 --threads 1       # BENCHMARKS.md section 9
    python benchmarks/frontier.py                              # every router of the sweep table
    python benchmarks/frontier.py --config configs/frontier_small.toml \
        --routers top_k,top_k:k=4,relu,top_p:p=0.4 --seeds 3 --threads 1 \
        --out runs/frontier_training \
        --results benchmarks/results/frontier_training.json    # both views, section 9

Every run is a resumable `dynroute train` folder under --out (default runs/frontier);
rerunning reuses finished runs. All options: ``dynroute bench frontier --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "frontier.json"


def main() -> None:
    from dynroute.cli import app

    # later options win, so a --results given here replaces the default
    sys.argv = ["dynroute", "bench", "frontier", "--results", str(RESULTS), *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
