"""DynMoEForCausalLM: shapes, causality, losses, save/load, generate, hooks."""

from __future__ import annotations

import pytest
import torch

from dynroute.layers import MoE
from dynroute.models import DynMoEConfig, DynMoEForCausalLM

V = 61


def tiny(**kw: object) -> DynMoEForCausalLM:
    base = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=48, num_experts=4)
    base.update(kw)
    return DynMoEForCausalLM(DynMoEConfig(**base)).eval()


ROUTER_SETTINGS = [
    {"router": "top_k", "k": 2},
    {"router": "top_p", "p": 0.4},
    {"router": "null_experts", "k": 2, "num_null": 2},
]


@pytest.mark.parametrize("settings", ROUTER_SETTINGS, ids=lambda s: s["router"])
def test_shapes_and_loss(settings: dict) -> None:
    model = tiny(**settings)
    ids, labels = torch.randint(0, V, (2, 3, 10))
    out = model(ids, labels=labels)
    assert out.logits.shape == (3, 10, V)
    assert out.experts_per_layer.shape == (2,)
    assert len(out.aux) == 2 and all(a.routing.num_tokens == 30 for a in out.aux)
    assert torch.allclose(out.loss, out.lm_loss + out.aux_loss)
    assert torch.allclose(out.aux_loss, out.aux[0].loss + out.aux[1].loss)
    # a fresh model is close to uniform over the vocabulary
    assert abs(out.lm_loss.item() - torch.log(torch.tensor(float(V))).item()) < 0.5
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_top_k_uses_exactly_k_experts() -> None:
    out = tiny(router="top_k", k=2)(torch.randint(0, V, (2, 9)))
    assert out.experts_per_layer.tolist() == [2.0, 2.0]


def test_ignore_index_is_ignored() -> None:
    model = tiny()
    ids = torch.randint(0, V, (2, 6))
    labels = ids.clone()
    labels[:, 3:] = -100
    full = torch.nn.functional.cross_entropy(
        model(ids).logits[:, :3].reshape(-1, V), ids[:, :3].reshape(-1)
    )
    assert torch.allclose(model(ids, labels=labels).lm_loss, full, atol=1e-6)


@pytest.mark.parametrize("settings", ROUTER_SETTINGS[:2], ids=lambda s: s["router"])
def test_future_tokens_do_not_change_past_logits(settings: dict) -> None:
    model = tiny(**settings)
    ids = torch.randint(0, V, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = torch.randint(0, V, (2, 5))
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_moe_every_places_dense_layers() -> None:
    model = tiny(n_layers=4, moe_every=2)
    kinds = [isinstance(b.ffn, MoE) for b in model.blocks]
    assert kinds == [False, True, False, True]
    assert len(model.moe_layers()) == 2
    assert model(torch.randint(0, V, (1, 5))).experts_per_layer.shape == (2,)


def test_forward_hooks_see_routing() -> None:
    model = tiny(router="top_p", p=0.5)
    seen: list[float] = []
    for moe in model.moe_layers():
        moe.register_forward_hook(lambda _m, _i, out: seen.append(out[1].mean_experts))
    out = model(torch.randint(0, V, (2, 5)))
    assert seen == out.experts_per_layer.tolist()


@pytest.mark.parametrize("layout", ["stacked", "per_expert"])
def test_save_load_round_trip(tmp_path, layout: str) -> None:
    model = tiny(router="top_p", p=0.3, load_balance_weight=0.05, expert_layout=layout)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = DynMoEForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.router["name"] == "top_p" and loaded.config.router["p"] == 0.3
    assert loaded.config.load_balance_weight == 0.05
    assert loaded.config.expert_layout == layout
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_generate_greedy_matches_argmax() -> None:
    model = tiny()
    ids = torch.randint(0, V, (2, 4))
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (2, 9) and torch.equal(out[:, :4], ids)
    with torch.no_grad():
        nxt = model(out[:, :4]).logits[:, -1].argmax(-1)
    assert torch.equal(out[:, 4], nxt)


def test_too_long_input_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny(max_seq_len=8)(torch.zeros(1, 9, dtype=torch.long))


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown router"):
        DynMoEConfig(router="top_q")
    with pytest.raises(ValueError, match="divisible"):
        DynMoEConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="expert_layout"):
        DynMoEConfig(expert_layout="sharded")


def test_per_expert_layout_trains_like_stacked() -> None:
    """Same init seed, same data: the two layouts compute the same loss and gradients."""
    torch.manual_seed(0)
    stacked = tiny(router="top_p", p=0.4).train()
    split = tiny(router="top_p", p=0.4, expert_layout="per_expert").train()
    state = {}
    for name, t in stacked.state_dict().items():
        if name.endswith(("experts.gate_up", "experts.down")):
            state.update({f"{name}.{e}": w for e, w in enumerate(t)})
        else:
            state[name] = t
    split.load_state_dict(state)
    ids = torch.randint(0, V, (2, 9))
    a, b = stacked(ids, labels=ids), split(ids, labels=ids)
    torch.testing.assert_close(b.loss, a.loss)
    a.loss.backward()
    b.loss.backward()
    g_stacked = stacked.blocks[0].ffn.experts.gate_up.grad
    g_split = split.blocks[0].ffn.experts.gate_up
    for e, w in enumerate(g_split):
        if w.grad is not None:
            torch.testing.assert_close(w.grad, g_stacked[e], atol=1e-6, rtol=1e-5)
        else:
            assert torch.all(g_stacked[e] == 0)
