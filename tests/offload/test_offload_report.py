"""The routing report's expert-offloading section (dynroute analyze)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynroute.analysis.report import render_report
from dynroute.analysis.run import analyze_model
from dynroute.models import DynMoEConfig, DynMoEForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.slow
def test_analysis_stats_and_report_have_the_offload_section(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = DynMoEConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=32,
                       num_experts=8, router="top_p", p=0.5, max_seq_len=64)  # fmt: skip
    model = DynMoEForCausalLM(cfg).eval()
    stats = analyze_model(model, torch.arange(257) % 64, seq_len=32, progress=False)
    off = stats["offload"]
    assert off["tokens"] == 256
    rates = off["hit_rate"]
    assert set(rates) >= {"belady", "lru", "lfu", "pregate", "reuse"}
    for policy in ("lru", "lfu", "reuse"):  # Belady is the optimum of demand-only policies
        assert all(b >= r for b, r in zip(rates["belady"], rates[policy], strict=True))
    assert 0 <= off["prefetch"]["recall"] <= 1
    html = render_report({"tiny": stats}, tmp_path).read_text()
    assert "Expert offloading (simulated): tiny" in html
