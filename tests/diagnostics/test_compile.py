"""The routing and dispatch hot path compiles as one graph (torch.compile, fullgraph=True)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from dynroute.layers.moe import MoE


# top-p is not here: its number of assignments A is data-dependent, and the Python
# branches on A (no assignment; a decoding-size call) break the graph there
@pytest.mark.parametrize("router", ["top_k:k=2", "top_k:k=1"])
def test_moe_layer_compiles_without_graph_breaks(router: str) -> None:
    torch._dynamo.reset()
    moe = MoE(16, 32, 8, router=router)
    moe = moe.to(torch.bfloat16)  # grouped_mm's compiled form takes bf16
    x = torch.randn(48, 16, dtype=torch.bfloat16)
    eager_x, compiled_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, aux = moe(eager_x)
    (y.float().square().sum() + aux.loss).backward()
    expected = [eager_x.grad, *(p.grad for p in moe.parameters())]
    moe.zero_grad()
    compiled = torch.compile(moe, backend="eager", fullgraph=True)
    y2, aux2 = compiled(compiled_x)
    (y2.float().square().sum() + aux2.loss).backward()
    torch.testing.assert_close(y2, y)
    got = [compiled_x.grad, *(p.grad for p in moe.parameters())]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
