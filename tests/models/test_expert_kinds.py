"""Expert kinds in the model config: config.json, save/load, bad specs, the router setting."""

from __future__ import annotations

import json

import pytest
import torch

from dynroute.layers.experts import MixedExperts, MLPExperts, SwiGLUExperts
from dynroute.models import DynMoEConfig, DynMoEForCausalLM

V = 61
SIZES = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=48, num_experts=4)


def tiny(**kw: object) -> DynMoEForCausalLM:
    return DynMoEForCausalLM(DynMoEConfig(**{**SIZES, **kw})).eval()


def test_the_default_is_swiglu_and_is_stored() -> None:
    config = DynMoEConfig(**SIZES)
    assert config.experts == {"name": "swiglu"}
    assert json.loads(config.to_json_string())["experts"] == {"name": "swiglu"}
    assert all(type(m.experts) is SwiGLUExperts for m in tiny().moe_layers())


@pytest.mark.parametrize("spec", ["mlp", {"name": "mlp"}])
def test_config_round_trips_with_mlp_experts(spec) -> None:
    config = DynMoEConfig(**SIZES, experts=spec)
    assert config.experts == {"name": "mlp"}
    again = DynMoEConfig.from_dict(json.loads(config.to_json_string()))
    assert again.experts == {"name": "mlp"} and again.to_dict() == config.to_dict()


def test_saved_model_with_mlp_experts_round_trips(tmp_path) -> None:
    model = tiny(experts={"name": "mlp", "d_ff": 24, "activation": "relu"})
    experts = model.moe_layers()[0].experts
    assert type(experts) is MLPExperts and (experts.d_ff, experts.num_experts) == (24, 4)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["experts"]
    assert saved == {"name": "mlp", "d_ff": 24, "activation": "relu"}
    loaded = DynMoEForCausalLM.from_pretrained(tmp_path).eval()
    assert all(type(m.experts) is MLPExperts for m in loaded.moe_layers())
    assert loaded.moe_layers()[0].experts.activation is torch.nn.functional.relu
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert "blocks.0.ffn.experts.w1" in a
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_a_config_json_without_experts_loads_as_swiglu(tmp_path) -> None:
    tiny().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    raw = json.loads(path.read_text())
    del raw["experts"]  # written before the field existed
    path.write_text(json.dumps(raw))
    loaded = DynMoEForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.experts == {"name": "swiglu"}
    assert type(loaded.moe_layers()[0].experts) is SwiGLUExperts


def test_mixed_widths_from_the_config_train() -> None:
    parts = [{"name": "swiglu", "d_ff": 64, "num_experts": 1}, "swiglu:d_ff=8"]
    model = tiny(experts={"name": "mixed", "parts": parts}).train()
    experts = model.moe_layers()[0].experts
    assert type(experts) is MixedExperts
    assert [(p.d_ff, p.num_experts) for p in experts.parts] == [(64, 1), (8, 3)]
    ids = torch.randint(0, V, (2, 9))
    model(ids, labels=ids).loss.backward()
    assert experts.parts[0].gate_up.grad is not None


@pytest.mark.parametrize(
    ("experts", "match"),
    [
        ("mpl", r"unknown expert kind 'mpl'; known: .*mixed, mlp"),
        ({"name": "mlp", "width": 4}, r"mlp: unknown argument\(s\) \['width'\]"),
        ({"d_ff": 4}, "has no 'name'"),
        (3, "an expert kind is a name or a dict"),
        ("mlp:num_experts=3", "holds 3 experts, the layer has num_experts=4"),
        ({"name": "mixed", "parts": ["mlp", "mlp", "mlp"]}, "cannot share the 4 experts"),
    ],
)
def test_a_bad_experts_spec_is_refused_by_the_config(experts, match) -> None:
    with pytest.raises(ValueError, match=match) as err:
        DynMoEConfig(**SIZES, experts=experts)
    assert str(err.value).startswith("DynMoEConfig: ")


def test_expert_layout_needs_a_kind_with_a_layout() -> None:
    with pytest.raises(ValueError, match="the expert kind mlp has no layout"):
        DynMoEConfig(**SIZES, experts="mlp", expert_layout="per_expert")
    config = DynMoEConfig(**SIZES, experts="swiglu", expert_layout="per_expert")
    assert DynMoEForCausalLM(config).moe_layers()[0].experts.layout == "per_expert"


def test_building_the_config_draws_no_random_numbers() -> None:
    torch.manual_seed(0)
    DynMoEConfig(**SIZES, experts={"name": "mixed", "parts": ["mlp", "swiglu"]})
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)


def test_router_keywords_are_the_routers_own_fields_without_old_defaults() -> None:
    assert DynMoEConfig(**SIZES).router == {"name": "top_k", "k": 2, "normalize": True}
    assert DynMoEConfig(**{**SIZES, "num_experts": 1}).router["k"] == 1  # as MoE: min(2, E)
    assert DynMoEConfig(router="top_p", p=0.3).router["p"] == 0.3
    # no old defaults (p=0.4, num_null=4, ...) for a router named without its parameters
    with pytest.raises(ValueError, match=r"top_p: missing required argument\(s\) \['p'\]"):
        DynMoEConfig(router="top_p")
    with pytest.raises(ValueError, match="null_experts: missing required"):
        DynMoEConfig(router="null_experts")
