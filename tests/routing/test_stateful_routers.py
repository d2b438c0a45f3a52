"""The routers with layer state or context: each router's own rule (controller, bias
update, L1 adaptation, schedule, causality, ...). What every router must do is in
test_every_router.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dynroute.layers import MoE
from dynroute.routing import RouteContext, make_router, step_routers
from dynroute.routing.deepseek_v3 import group_limited_top_k
from dynroute.routing.graph_of_tokens import mix_similar_logits
from router_cases import route_fresh
from strategies import logits as logits_st


@given(logits_st(min_experts=4), st.booleans())
def test_each_routers_own_rule_on_experts_per_token(logits, training):
    """The count each rule promises (the Routing invariants of every router are in
    test_every_router.py)."""
    logits = logits[:, : logits.shape[1] // 2 * 2]  # deepseek_v3's two groups need an even E

    def counts(spec: str) -> torch.Tensor:
        return route_fresh(spec, logits, training=training).experts_per_token()

    for spec in ("deepseek_v3:k=2,n_group=2,topk_group=1", "rmoe:k=2", "graph_of_tokens:k=2"):
        assert torch.all(counts(spec) == 2), spec
    assert torch.all(counts("thor") == (2 if training else 1))
    assert torch.all(counts("smoe_dropout:k_start=2,k_end=3") == 2)  # k_start until a step
    assert torch.all(counts("dtop_p:target=1.5") >= 1)
    r = route_fresh("relu:target=2", logits, training=training)
    assert torch.equal(r.experts_per_token(), (logits > 0).sum(dim=1))
    torch.testing.assert_close(r.weight, torch.relu(logits)[r.token, r.expert])


# --- DTop-p -------------------------------------------------------------------------


def _train_moe(router: str, steps: int, lr: float = 1e-2, seed: int = 0) -> tuple[MoE, list]:
    """A 4-expert MoE fitting a fixed random map; returns the layer and k̄ per step."""
    torch.manual_seed(seed)
    moe = MoE(16, 32, 4, router=router).train()
    target_map = torch.randn(16, 16) / 4
    opt = torch.optim.AdamW(moe.parameters(), lr=lr)
    history = []
    for step in range(steps):
        x = torch.randn(64, 16)
        y, aux = moe(x)
        loss = (y - x @ target_map).pow(2).mean() + aux.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(aux.mean_experts)
        step_routers(moe, step + 1, steps)
    return moe, history


@pytest.mark.parametrize("target", [1.5, 2.5])
def test_dtop_p_controller_holds_the_target_within_2_percent(target, one_thread):
    moe, history = _train_moe(f"dtop_p:target={target}", 300)
    late = history[150:]
    mean = sum(late) / len(late)
    assert abs(mean - target) <= 0.02 * target, (mean, target)
    assert abs(float(moe.router_state.k_running) - target) <= 0.1 * target
    assert moe.router_state.scale.grad is not None  # the logit scale is learned


def test_dtop_p_layers_share_one_p():
    from dynroute.models import DynMoEConfig, DynMoEForCausalLM

    cfg = DynMoEConfig(
        vocab_size=32,
        d_model=16,
        n_layers=3,
        n_heads=2,
        d_ff=16,
        num_experts=4,
        router="dtop_p:target=2.5",
    )
    model = DynMoEForCausalLM(cfg).train()
    ids = torch.randint(0, 32, (2, 8))
    model(ids, labels=ids).loss.backward()
    step_routers(model, 1, 10)
    ps = {float(m.router_state.p) for m in model.moe_layers()}
    assert len(ps) == 1 and ps != {make_router("dtop_p:target=2.5").initial_p(4)}


# --- DeepSeek-V3 --------------------------------------------------------------------


def test_deepseek_bias_moves_load_toward_balance():
    router = make_router("deepseek_v3:k=1,bias_update_speed=0.05")
    state = router.make_state(4, 4)
    logits = torch.randn(512, 4) + torch.tensor([1.5, 0.5, 0.0, -1.0])  # skewed
    ctx = RouteContext(training=True)

    def imbalance() -> float:
        counts = router.route(logits, state, ctx).expert_counts().float()
        return float(counts.max() / counts.mean())

    before = imbalance()
    for _ in range(40):
        router.after_step([state])
        imbalance()
    after = imbalance()
    assert after < before and after < 1.3, (before, after)
    assert state.bias[0] < 0 < state.bias[3]  # the favourite is pushed down


def test_deepseek_bias_only_selects_and_weights_are_scaled_scores():
    router = make_router("deepseek_v3:k=2,routed_scaling_factor=2.5")
    state = router.make_state(4, 4)
    state.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 10.0]))  # forces experts 2 and 3
    logits = torch.tensor([[3.0, 2.0, -1.0, -2.0]])
    r = router.route(logits, state)
    assert r.expert.tolist() == [2, 3]
    s = torch.sigmoid(logits[0, 2:])
    torch.testing.assert_close(r.weight, 2.5 * s / s.sum())


def test_group_limited_top_k_matches_a_reference_loop():
    g = torch.Generator().manual_seed(3)
    sel = torch.rand(50, 8, generator=g)
    got = group_limited_top_k(sel, 3, n_group=4, topk_group=2)
    for t in range(50):
        groups = sel[t].view(4, 2).sum(dim=1)  # two experts a group: top-2 = both
        keep = groups.topk(2).indices.tolist()
        allowed = [i for i in range(8) if i // 2 in keep]
        want = sorted(allowed, key=lambda i: -float(sel[t, i]))[:3]
        assert sorted(got[t].tolist()) == sorted(want)


def test_deepseek_rejects_groups_that_do_not_fit():
    with pytest.raises(ValueError, match="n_group=3"):
        MoE(8, 16, 4, router="deepseek_v3:n_group=3,topk_group=1")
    with pytest.raises(ValueError, match="lower k or raise topk_group"):
        MoE(8, 16, 4, router="deepseek_v3:k=3,n_group=2,topk_group=1")


# --- ReLU ---------------------------------------------------------------------------


def test_relu_l1_weight_adapts_toward_the_target_sparsity():
    router = make_router("relu:target=1")
    state = router.make_state(4, 4)
    ctx = RouteContext(training=True)
    router.route(torch.ones(8, 4), state, ctx)  # every gate on: too dense
    router.after_step([state])
    assert float(state.l1_weight) == pytest.approx(1e-8 * 1.2)
    router.route(-torch.ones(8, 4), state, ctx)  # every gate off: too sparse
    router.after_step([state])
    assert float(state.l1_weight) == pytest.approx(1e-8)
    ctx = RouteContext(training=True)
    router.route(torch.ones(3, 4), state, ctx)
    torch.testing.assert_close(ctx.aux_loss, state.l1_weight * 4.0)


def test_relu_training_reaches_its_target(one_thread):
    _, history = _train_moe("relu:target=1.5,l1_init=1e-3,alpha=1.1", 200, lr=3e-3)
    late = sum(history[150:]) / 50
    assert abs(late - 1.5) < 0.5, late


def test_relu_rms_norm_variant_learns_its_scale():
    moe = MoE(8, 16, 4, router="relu:rms_norm=true").train()
    y, aux = moe(torch.randn(10, 8))
    (y.sum() + aux.loss).backward()
    assert moe.router_state.norm_weight.grad is not None
    assert MoE(8, 16, 4, router="relu").router_state.norm_weight is None


# --- RMoE ---------------------------------------------------------------------------


def test_rmoe_carries_its_gru_state_across_layers():
    torch.manual_seed(0)
    first, second = (MoE(8, 16, 4, router="rmoe:k=2,hidden_size=4") for _ in range(2))
    second.router_state.proj.data.normal_()  # make the GRU state matter
    x = torch.randn(12, 8)
    _, aux = first(x)
    assert aux.carry.shape == (12, 4)
    with_carry = second(x, aux.carry)[1].routing
    without = second(x)[1].routing
    assert not torch.equal(with_carry.probs, without.probs)
    # the gradient crosses layers through the carry
    second(x, aux.carry)[1].routing.weight.sum().backward()
    assert first.router_state.gru.weight_ih.grad.abs().sum() > 0


def test_routers_that_need_a_layer_say_so():
    for spec in ("rmoe", "smoe_dropout"):
        with pytest.raises(ValueError, match="not supported in the HF adapters"):
            make_router(spec)(torch.zeros(2, 4))


# --- Graph of Tokens ----------------------------------------------------------------


def test_graph_of_tokens_is_causal_within_a_sequence():
    z = torch.randn(2, 6, 5)
    mixed = mix_similar_logits(z.reshape(12, 5), 2, alpha=0.7)
    changed = z.clone()
    changed[:, 4:] = torch.randn(2, 2, 5)  # later tokens of both sequences
    other = mix_similar_logits(changed.reshape(12, 5), 2, alpha=0.7)
    torch.testing.assert_close(mixed.view(2, 6, 5)[:, :4], other.view(2, 6, 5)[:, :4])
    # the two sequences do not see each other
    first_only = mix_similar_logits(z[0], 1, alpha=0.7)
    torch.testing.assert_close(mixed.view(2, 6, 5)[0], first_only)


def test_graph_of_tokens_mixes_toward_similar_tokens():
    z = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.1, 0.0], [0.0, 0.0, 0.2]])
    mixed = mix_similar_logits(z, 1, alpha=0.5)
    assert mixed[1, 0] == pytest.approx(5.0, abs=0.1)  # its similar predecessor agrees
    torch.testing.assert_close(mix_similar_logits(z, 1, alpha=0.0), z)


# --- THOR ---------------------------------------------------------------------------


def test_thor_combines_two_random_experts_with_a_consistency_loss():
    torch.manual_seed(0)
    moe = MoE(8, 16, 4, router="thor:consistency_weight=2").train()
    x = torch.randn(30, 8)
    torch.manual_seed(1)
    y, aux = moe(x)
    torch.manual_seed(1)
    r = moe.route.route(moe.gate(x).float(), None, RouteContext(training=True))
    assert torch.equal(aux.routing.expert, r.expert)  # the draw is torch's global RNG
    ref = moe.dispatch(x, r, moe.experts)  # ½ y_a + ½ y_b
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    e = r.expert.view(-1)
    pairs = torch.stack([e[r.token == t] for t in range(30)])
    ya, yb = (
        moe.dispatch(
            x,
            make_router("top_k:k=1")(torch.nn.functional.one_hot(pairs[:, i], 4).float() * 50),
            moe.experts,
        )
        for i in (0, 1)
    )
    want = 2 * (ya - yb).pow(2).mean()
    lb_etc = aux.loss - want
    torch.testing.assert_close(
        lb_etc,
        moe.load_balance_weight * aux.load_balance + moe.dynamic_weight * aux.dynamic,
        atol=1e-5,
        rtol=1e-4,
    )
    moe.eval()
    assert moe(x)[1].mean_experts == 1.0
    torch.testing.assert_close(moe(x)[0], moe(x)[0])  # evaluation repeats


# --- SMoE-Dropout -------------------------------------------------------------------


def test_smoe_dropout_k_grows_linearly_and_the_router_stays_fixed():
    moe = MoE(8, 16, 4, router="smoe_dropout").train()  # k from 1 to E = 4
    fixed = moe.router_state.router.clone()
    ks = []
    for step in range(1, 9):
        y, aux = moe(torch.randn(6, 8))
        ks.append(aux.routing.experts_per_token().unique().tolist())
        (y.sum() + aux.loss).backward()
        step_routers(moe, step, 8)
    assert ks == [[1], [1], [2], [2], [3], [3], [4], [4]]
    assert torch.equal(moe.router_state.router, fixed)
    assert [p for p in moe.router_state.parameters()] == []
    moe.eval()
    assert moe(torch.randn(6, 8))[1].mean_experts == 4.0
    slim = MoE(8, 16, 4, router="smoe_dropout:eval_k=1").eval()
    assert slim(torch.randn(6, 8))[1].mean_experts == 1.0
