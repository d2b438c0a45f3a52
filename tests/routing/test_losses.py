"""Loss values with known answers."""

import math

import torch

from dynroute.routing import expert_choice, null_experts, top_k, top_p
from dynroute.routing.losses import dynamic_loss, load_balance_loss, router_loss, z_loss


def test_load_balance_is_one_at_perfect_balance_for_any_k():
    for k in (1, 2, 4):
        assert abs(load_balance_loss(top_k(torch.zeros(16, 8), k)).item() - 1.0) < 1e-6
    # top_p on flat logits keeps a variable count: still 1.0
    assert abs(load_balance_loss(top_p(torch.zeros(16, 8), 0.4)).item() - 1.0) < 1e-6


def test_load_balance_reads_e_when_collapsed():
    logits = torch.zeros(32, 4)
    logits[:, 0] = 50.0
    assert abs(load_balance_loss(top_k(logits, 1)).item() - 4.0) < 1e-4


def test_load_balance_with_null_experts_uses_one_null_bucket():
    # every token: real expert 0 and one null; nulls equally probable
    logits = torch.tensor([[6.0, -9.0, 5.0, 5.0]] * 6)
    r = null_experts(logits, k=2, num_null=2)
    assert torch.all(r.experts_per_token() == 1)
    q = torch.softmax(logits[0], -1)
    # f over [real0, real1, null, null] = [1/2, 0, 1/4, 1/4]: the one null pick is shared
    expected = 4 * (0.5 * q[0] + 0.25 * q[2] + 0.25 * q[3])
    assert abs(load_balance_loss(r).item() - expected.item()) < 1e-5


def test_z_loss_and_dynamic_loss_values():
    assert abs(z_loss(torch.zeros(3, 4)).item() - math.log(4) ** 2) < 1e-6
    assert abs(dynamic_loss(top_p(torch.zeros(3, 4), 0.4)).item() - math.log(4)) < 1e-6
    peaked = torch.tensor([[100.0, 0.0, 0.0, 0.0]])
    assert dynamic_loss(top_p(peaked, 0.4)).item() < 1e-6


def test_losses_are_differentiable_and_weighted():
    logits = torch.randn(10, 6, requires_grad=True)
    r = top_p(logits, 0.4)
    out = router_loss(r, logits, load_balance_weight=0.5, dynamic_weight=0.25, z_loss_weight=0.1)
    expected = 0.5 * out["load_balance"] + 0.25 * out["dynamic"] + 0.1 * out["z"]
    torch.testing.assert_close(out["total"], expected)
    out["total"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_losses_on_empty_input_are_zero():
    r = expert_choice(torch.zeros(0, 4))
    assert load_balance_loss(r).item() == 0.0
    assert dynamic_loss(r).item() == 0.0
    assert z_loss(torch.zeros(0, 4)).item() == 0.0
