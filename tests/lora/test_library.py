"""A library of independently trained adapters: Arrow equals peft's, routers, save/load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from dynroute.lora import add_lora_experts, save_lora_experts
from dynroute.lora.library import (
    LIBRARY_ROUTERS,
    export_peft_adapters,
    library_layers,
    load_adapter_library,
    save_adapter_library,
    set_library_router,
)
from lora_models import randomize_adapters, tiny_hf

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "v_proj"]
R = 4


def _peft_adapters(root: Path, n: int, alphas: list[float] | None = None) -> list[Path]:
    """n peft LoRA folders on tiny_hf("llama"), each with its own non-zero A and B."""
    folders = []
    for i in range(n):
        alpha = (alphas or [8.0] * n)[i]
        config = peft.LoraConfig(r=R, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=0.0)
        model = peft.get_peft_model(tiny_hf("llama"), config)
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.save_pretrained(str(root / f"task{i}"))
        folders.append(root / f"task{i}")
    return folders


@pytest.mark.parametrize("top_k,temperature", [(2, 1.0), (3, 0.5)])
def test_arrow_equals_peft(tmp_path: Path, top_k: int, temperature: float) -> None:
    folders = _peft_adapters(tmp_path, 5, alphas=[8.0, 4.0, 8.0, 16.0, 2.0])
    ids = torch.randint(0, 64, (3, 11), generator=torch.Generator().manual_seed(0))
    arrow = peft.ArrowConfig(top_k=top_k, router_temperature=temperature, rng_seed=0)
    theirs = peft.create_arrow_model(tiny_hf("llama"), [str(f) for f in folders], arrow)
    ours = load_adapter_library(tiny_hf("llama"), folders, router="arrow", top_k=top_k,
                                temperature=temperature, prototype_seed=0)  # fmt: skip
    with torch.no_grad():
        expected, got, plain = theirs(ids).logits, ours(ids).logits, tiny_hf("llama")(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the adapters matter
    layers = library_layers(ours)
    assert len(layers) == 4 and all(m.last_routing.mean_experts() == top_k for m in layers.values())
    # the uniform merge is a different function: Arrow's routing is what matched
    with torch.no_grad():
        uniform = set_library_router(ours, "uniform")(ids).logits
    assert (uniform - expected).abs().max() > 1e-3


def test_every_router_routes_and_computes_only_chosen_adapters(tmp_path: Path) -> None:
    folders = _peft_adapters(tmp_path, 4)
    model = load_adapter_library(tiny_hf("llama"), folders, top_k=2)
    layer = next(iter(library_layers(model).values()))
    with torch.no_grad():
        layer.gates.copy_(torch.randn(layer.gates.shape))
        layer.gate_trained.fill_(True)
    for layer_ in library_layers(model).values():
        layer_.gates.copy_(layer.gates)
        layer_.gate_trained.fill_(True)
    ids = torch.randint(0, 64, (2, 9))
    LIBRARY_ROUTERS.discover()
    seen = set()
    for name, cls in sorted(LIBRARY_ROUTERS.items()):
        for spec in cls.evaluation_specs(4, 2, gates=True):
            route = LIBRARY_ROUTERS.build(spec).for_domain("task1", ["task0", "task1"])
            set_library_router(model, route)
            with torch.no_grad():
                out = model(ids).logits
            assert torch.isfinite(out).all()
            routing = layer.last_routing
            k = routing.experts_per_token()
            assert routing.num_assignments == int(k.sum()) and k.min() >= 1
            # combine weights sum to 1 per token (a convex mixture of chosen adapters)
            torch.testing.assert_close(routing.dense_weights().sum(1), torch.ones(18))
            seen.add(name)
    assert seen == set(LIBRARY_ROUTERS)
    set_library_router(model, "dynamic_k:scores=arrow,top_p=0.5,max_k=2")
    with torch.no_grad():
        model(ids)
    assert layer.last_routing.mean_experts() < 2.0  # some tokens use a single adapter


def test_round_trip_ours_peft_and_saved_library(tmp_path: Path) -> None:
    ours = []
    for i in range(3):  # three adapters of ours (E = 1), as `dynroute lora train` writes
        m = add_lora_experts(tiny_hf("llama"), TARGETS, num_experts=1, rank=R, alpha=8.0 + i,
                             router="top_k", k=1)  # fmt: skip
        randomize_adapters(m, seed=10 + i)
        ours.append(save_lora_experts(m, tmp_path / f"d{i}" / "adapters"))
    ids = torch.randint(0, 64, (2, 9))
    a = load_adapter_library(tiny_hf("llama"), ours, router="arrow", top_k=2)
    assert a.adapter_library_config["names"] == ["d0", "d1", "d2"]
    with torch.no_grad():
        expected = a(ids).logits
    peft_folders = export_peft_adapters(a, tmp_path / "peft")
    b = load_adapter_library(tiny_hf("llama"), peft_folders, router="arrow", top_k=2)
    saved = save_adapter_library(a, tmp_path / "library")
    c = load_adapter_library(tiny_hf("llama"), saved)
    assert c.adapter_library_config["router"] == {"name": "arrow", "top_k": 2, "temperature": 1.0}
    with torch.no_grad():
        torch.testing.assert_close(b(ids).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c(ids).logits, expected, rtol=0, atol=0)
    # peft reads the exported folders as plain LoRAs: adapter d1 alone is our oracle on d1
    theirs = peft.PeftModel.from_pretrained(tiny_hf("llama"), str(peft_folders[1]))
    set_library_router(a, "oracle:adapter=d1")
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, theirs(ids).logits, rtol=1e-5, atol=1e-5)


def test_mismatched_library_fails_in_one_line_naming_the_adapter(tmp_path: Path) -> None:
    good = _peft_adapters(tmp_path, 2)
    other = peft.get_peft_model(tiny_hf("llama"), peft.LoraConfig(r=R, target_modules=["q_proj"]))
    other.save_pretrained(str(tmp_path / "odd_modules"))
    ranked = peft.get_peft_model(tiny_hf("llama"), peft.LoraConfig(r=2, target_modules=TARGETS))
    ranked.save_pretrained(str(tmp_path / "odd_rank"))
    for bad, words in (("odd_modules", "targets modules"), ("odd_rank", "rank 2")):
        with pytest.raises(ValueError, match=f"adapter {bad} .*{words}") as err:
            load_adapter_library(tiny_hf("llama"), [*good, tmp_path / bad])
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="top_k=5 but the library holds 2"):
        load_adapter_library(tiny_hf("llama"), good, top_k=5)
    with pytest.raises(ValueError, match="no gate"):
        load_adapter_library(tiny_hf("llama"), good, router="phatgoose")
    with pytest.raises(FileNotFoundError, match="not an adapter folder"):
        load_adapter_library(tiny_hf("llama"), [tmp_path])
    with pytest.raises(ValueError, match="unknown library router 'nope'"):
        load_adapter_library(copy.deepcopy(tiny_hf("llama")), good, router="nope")


def test_dynamic_k_at_full_mass_is_top_k(tmp_path: Path) -> None:
    folders = _peft_adapters(tmp_path, 4)
    ids = torch.randint(0, 64, (2, 9))
    model = load_adapter_library(tiny_hf("llama"), folders, router="arrow", top_k=2)
    with torch.no_grad():
        top_k = model(ids).logits
        dyn = set_library_router(model, "dynamic_k:top_p=1.0,max_k=2")(ids).logits
        fewer = set_library_router(model, "dynamic_k:threshold=0.5")(ids).logits
    torch.testing.assert_close(dyn, top_k, rtol=1e-6, atol=1e-6)
    assert next(iter(library_layers(model).values())).last_routing.mean_experts() < 2.0
    assert torch.isfinite(fewer).all()
