"""Shared by tests/serve: the two model names and a toy outcome table to fit a router on."""

from __future__ import annotations

from dynroute.llm.data import OutcomeTable

SMALL, BIG = "small", "big"


def toy_table() -> OutcomeTable:
    """Sums: both models are right; poems: only the big one. Big costs 10x."""
    sums = [f"what is {a} plus {b}" for a in range(6) for b in range(4)]
    poems = [
        f"write a poem about {w} and {v}"
        for w in ("sea", "sky", "tree", "rock", "wind", "snow")
        for v in ("love", "time", "war", "home")
    ]
    quality = [[1.0, 1.0]] * len(sums) + [[0.0, 1.0]] * len(poems)
    return OutcomeTable.from_rows(
        sums + poems, [SMALL, BIG], quality, [[0.001, 0.01]] * len(quality)
    )
