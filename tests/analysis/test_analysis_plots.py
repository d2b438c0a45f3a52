"""Figures of stats.json: layers, experts and expert counts get whole-number ticks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from dynroute.analysis.plots import (
    plot_experts_hist,
    plot_experts_per_layer,
    plot_load,
    plot_token_id,
)


def _stats(layers: int, experts: int, named: bool) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    meta = {"layer_indices": [2 * i + 1 for i in range(layers)]} if named else {}
    return {
        "meta": meta,
        "experts_hist": [0, 5, 3],
        "experts_per_layer": [1.5] * layers,
        "token_id_consistency": [0.8] * layers,
        "token_id_baseline": [0.3] * layers,
        "layers": [
            {
                "expert_tokens": rng.integers(1, 20, experts).tolist(),
                "load_cv": 0.4,
                "experts_hist": [0, 5, 3],
            }
            for _ in range(layers)
        ],
    }


@pytest.mark.parametrize(
    "plot", [plot_load, plot_experts_hist, plot_experts_per_layer, plot_token_id]
)
@pytest.mark.parametrize(("layers", "experts"), [(2, 3), (5, 8)])
@pytest.mark.parametrize("named", [False, True])
def test_layer_and_expert_axes_tick_whole_numbers(
    plot: Any, layers: int, experts: int, named: bool
) -> None:
    fig = plot({"run": _stats(layers, experts, named)})
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":  # a colour scale: fractions are its point
            continue
        axes = [ax.yaxis, ax.xaxis] if ax.images else [ax.xaxis]  # bar charts: x only
        for axis in axes:
            lo, hi = sorted(axis.get_view_interval())
            ticks = [t for t in axis.get_ticklocs() if lo <= t <= hi]
            assert ticks, f"{ax.get_title()}: no ticks"
            assert all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
