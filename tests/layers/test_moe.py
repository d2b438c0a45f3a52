"""The MoE block: shapes, routers by name or callable, every dispatch path, edge cases."""

import functools

import pytest
import torch

from dynroute.layers import MoE
from dynroute.routing import top_k, top_p

ROUTER_ARGS = [
    ("top_k", {"k": 2}),
    ("top_p", {"p": 0.4}),
    ("null_experts", {"k": 2, "num_null": 2}),
    ("expert_choice", {"capacity_factor": 1.0}),
]


@pytest.mark.parametrize(("router", "kwargs"), ROUTER_ARGS)
def test_dispatch_paths_agree_including_router_gradients(router, kwargs):
    x = torch.randn(2, 7, 16)
    outs, grads = [], []
    for dispatch in ("loop", "grouped", "dense"):
        torch.manual_seed(0)
        moe = MoE(16, 24, 4, router=router, dispatch=dispatch, **kwargs)
        y, aux = moe(x)
        ((y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum() + aux.loss).backward()
        outs.append(y)
        grads.append([p.grad.clone() for p in moe.parameters()])
    for y, g in zip(outs[1:], grads[1:], strict=True):
        torch.testing.assert_close(y, outs[0], atol=1e-5, rtol=1e-5)
        for a, b in zip(g, grads[0], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert grads[0][0].abs().sum() > 0, "router weights get a gradient"


def test_router_as_callable_and_null_gate_width():
    moe = MoE(8, 16, 4, router=functools.partial(top_p, p=0.5))
    assert moe.gate.out_features == 4
    moe = MoE(8, 16, 4, router="null_experts:k=2,num_null=3")
    assert moe.gate.out_features == 7
    _, aux = moe(torch.randn(5, 8))
    assert aux.routing.num_experts == 4 and aux.logits.shape == (5, 7)
    with pytest.raises(TypeError, match="router name"):
        MoE(8, 16, 4, router=functools.partial(top_p, p=0.5), p=0.3)


def test_zero_tokens():
    moe = MoE(8, 16, 4, router="top_p", p=0.4)
    y, aux = moe(torch.randn(0, 8))
    assert y.shape == (0, 8) and aux.routing.num_tokens == 0
    (y.sum() + aux.loss).backward()
    assert torch.isfinite(aux.loss)


def test_expert_with_no_tokens_gets_zero_gradient():
    bias = torch.tensor([0.0, 0.0, 10.0, 0.0])  # every token prefers expert 2
    moe = MoE(8, 16, 4, router=lambda logits: top_k(logits + bias, 1))
    y, aux = moe(torch.randn(6, 8))
    assert aux.routing.expert_counts().tolist() == [0, 0, 6, 0]
    y.sum().backward()
    g = moe.experts.gate_up.grad
    assert torch.all(g[[0, 1, 3]] == 0) and g[2].abs().sum() > 0


def test_bf16():
    moe = MoE(16, 32, 4, router="top_p", p=0.4).to(torch.bfloat16)
    x = torch.randn(3, 5, 16, dtype=torch.bfloat16, requires_grad=True)
    y, aux = moe(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert aux.routing.weight.dtype == torch.float32
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_float32_layer_accepts_bf16_input():
    moe = MoE(16, 32, 4)
    y, _ = moe(torch.randn(4, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_nan_input_raises_clear_error():
    moe = MoE(8, 16, 4, router="top_p", p=0.4)
    x = torch.randn(3, 8)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        moe(x)


def test_aux_losses_and_mean_experts():
    moe = MoE(8, 16, 8, router="top_p", p=0.4)
    _, aux = moe(torch.randn(64, 8))
    assert 1.0 <= aux.mean_experts <= 8.0
    expected = 1e-2 * aux.load_balance + 1e-4 * aux.dynamic
    torch.testing.assert_close(aux.loss, expected)


def test_bad_router_name():
    with pytest.raises(ValueError, match="unknown router 'top_q'"):
        MoE(8, 16, 4, router="top_q")


def test_a_routers_own_loss_is_part_of_the_layer_aux_loss():
    import torch

    from dynroute.routing import make_router
    from dynroute.routing.losses import router_loss

    router = make_router("dynmole:threshold=0.8,p=0.6,k=2")
    moe = MoE(8, 16, 4, router=router)
    _, aux = moe(torch.randn(5, 8))
    plain = router_loss(aux.routing, aux.logits)  # no router: its own term left out
    own = router.aux_loss(aux.routing)
    assert own is not None and float(own.detach()) > 0
    torch.testing.assert_close(aux.loss, plain["total"] + own)
