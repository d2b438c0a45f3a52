"""The global budget loss drives the routers' share of big modules to its target."""

from __future__ import annotations

import pytest
import torch

from dynroute.adaptive import AdaptiveConfig, AdaptiveForCausalLM

# tiny matrices: a second thread only adds contention on a busy 2-core box
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("target", [0.1, 0.85])
def test_budget_loss_reaches_target(target: float) -> None:
    cfg = AdaptiveConfig(
        vocab_size=50, d_model=32, n_layers=3, n_heads=2, d_ff=64, small_ratio=8,
        routing="router", budget_target=target, budget_weight=10.0,
        temperature_start=1.0, temperature_end=0.1,
    )  # fmt: skip
    model = AdaptiveForCausalLM(cfg).train()
    gates = [b.ffn.gate.weight for b in model.blocks]
    for name, p in model.named_parameters():  # stage 3: the model frozen, routers trained
        p.requires_grad_(".ffn.gate." in name)
    opt = torch.optim.Adam(gates, lr=0.05)
    steps, seen = 80, []
    for step in range(steps):
        model.set_temperature(cfg.temperature_at(step, steps))
        ids = torch.randint(0, 50, (8, 32))
        out = model(ids, labels=ids.roll(-1, 1))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        seen.append(float(out.p_big.mean()))
    start = sum(seen[:5]) / 5
    assert abs(start - target) > 0.2  # it had somewhere to go
    assert sum(seen[-10:]) / 10 == pytest.approx(target, abs=0.05)  # soft P(big), per batch
    model.eval()  # hard routing: the share of big modules follows
    hard = model(torch.randint(0, 50, (16, 32))).big_per_layer.mean()
    assert float(hard) == pytest.approx(target, abs=0.12)
