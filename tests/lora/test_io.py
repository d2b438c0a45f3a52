"""save → load round-trips exactly; merge is exact for one always-on expert, refused otherwise."""

from __future__ import annotations

import json

import pytest
import torch

from dynroute.lora import (
    add_lora_experts,
    load_lora_experts,
    lora_layers,
    merge_lora_experts,
    save_lora_experts,
)
from lora_models import randomize_adapters, tiny_dynmoe, tiny_hf


@pytest.mark.parametrize(
    ("family", "router", "kind"),
    [
        ("dynmoe", "top_p:p=0.4", "lora"),
        ("llama", "dynmole:threshold=0.6", "lora"),
        ("qwen2", "null_experts:k=2,num_null=2", "lora"),
        ("llama", "top_k:k=2", "smora"),
    ],
)
def test_save_load_round_trip_is_exact(tmp_path, family: str, router: str, kind: str) -> None:
    build = tiny_dynmoe if family == "dynmoe" else lambda: tiny_hf(family)
    targets = ["qkv", "proj"] if family == "dynmoe" else ["q_proj", "v_proj", "down_proj"]
    model = add_lora_experts(build(), targets, num_experts=3, rank=4, router=router, kind=kind)
    randomize_adapters(model)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        expected = model(ids).logits
    save_lora_experts(model, tmp_path / "adapters")
    config = json.loads((tmp_path / "adapters" / "lora_experts.json").read_text())
    assert config["router"]["name"] == router.split(":")[0] and config["kind"] == kind
    assert config["targets"] == targets and len(config["modules"]) == len(lora_layers(model))
    loaded = load_lora_experts(build(), tmp_path / "adapters")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2) and p1.requires_grad == p2.requires_grad


def test_load_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"lora_experts\.json"):
        load_lora_experts(tiny_dynmoe(), tmp_path)


def test_merge_one_expert_is_exact_up_to_rounding() -> None:
    model = add_lora_experts(tiny_hf("llama"), ["q_proj", "o_proj"], num_experts=1, rank=4,
                             router="top_k", k=1)  # fmt: skip
    randomize_adapters(model)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        expected = model(ids).logits
        merge_lora_experts(model)
        got = model(ids).logits
    assert not lora_layers(model)
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.equal(got, tiny_hf("llama")(ids).logits)  # the adapter is in the weights


@pytest.mark.parametrize(
    ("experts", "router", "why"),
    [
        (2, "top_k:k=1", "2 experts"),
        (1, "null_experts:k=1,num_null=1", "null experts"),
    ],
)
def test_merge_refuses_when_not_exact(experts: int, router: str, why: str) -> None:
    model = add_lora_experts(tiny_dynmoe(), ["qkv"], num_experts=experts, rank=2, router=router)
    with pytest.raises(ValueError, match=why):
        merge_lora_experts(model)
    assert lora_layers(model)  # nothing changed
