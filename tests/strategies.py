"""Hypothesis strategies for router logits."""

import torch
from hypothesis import strategies as st


@st.composite
def logits(draw, min_experts: int = 1, max_experts: int = 16, max_tokens: int = 32):
    n = draw(st.integers(0, max_tokens))
    e = draw(st.integers(min_experts, max_experts))
    scale = draw(st.sampled_from([0.0, 0.1, 1.0, 5.0, 30.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, e, generator=g) * scale
