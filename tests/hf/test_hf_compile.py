"""Patched models under torch.compile and torch.export, transformers' experts_implementation,
and deepcopy after a training step, on tiny random models of every family.

Compiling is slow on a small CPU: one family runs by default, all seven under ``-m slow``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from unittest.mock import Mock, patch

import pytest
import torch
import transformers
from torch._dynamo.utils import counters
from transformers.integrations import moe as hf_moe

from dynroute.hf import adapted_blocks, apply_routing, remove_routing, routing_stats
from dynroute.hf.apply import router_aux_loss
from dynroute.hf.block import DYNROUTE_EXPERTS
from hf.tiny_models import FAMILY_NAMES, WITH_AUX_LOSS, build_tiny

IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")


def _families(fast: str, among: list[str] = FAMILY_NAMES) -> list:
    """``fast`` runs by default, the other families under ``-m slow``."""
    return [f if f == fast else pytest.param(f, marks=pytest.mark.slow) for f in among]


def _ids(batch: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(2, 128, (batch, length), generator=torch.Generator().manual_seed(1))


def _patched(family: str, router: str = "top_k", **kwargs: object) -> torch.nn.Module:
    return apply_routing(build_tiny(family, num_hidden_layers=2), router, **kwargs)


@pytest.mark.parametrize("family", _families("mixtral"))
def test_fullgraph_compile_matches_eager(family: str) -> None:
    torch._dynamo.reset()
    model = _patched(family)
    ids = _ids()
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits
        compiled = torch.compile(model, fullgraph=True)(ids, use_cache=False).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    # the counters are tensors: compiled forwards count too, eager + compiled = 2 passes
    assert routing_stats(model)["tokens"] == 2 * ids.numel()


@pytest.mark.parametrize("family", _families("mixtral"))
def test_torch_export_matches_eager(family: str) -> None:
    model = _patched(family)
    ids = _ids()
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits
    program = torch.export.export(model, (ids,), kwargs={"use_cache": False})
    exported = program.module()(ids, use_cache=False).logits
    torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_static_cache_generate_compiles_once(family: str) -> None:
    torch._dynamo.reset()
    model = _patched(family)
    ids = _ids(2, 5)
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    eager = model.generate(ids, **settings)
    model.forward = torch.compile(model.forward, fullgraph=True)
    settings["cache_implementation"] = "static"
    warm = model.generate(ids, **settings)  # compiles prefill and decode
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = model.generate(ids, **settings)
    assert counters["stats"]["unique_graphs"] == 0  # nothing compiled after the warm-up
    assert torch.equal(warm, again)
    assert torch.equal(warm, eager)


def _with_implementation(family: str, implementation: str, patched: bool) -> torch.Tensor:
    model = build_tiny(family)
    if patched:
        apply_routing(model, "top_k")
    if not type(model)._can_set_experts_implementation():
        pytest.skip(f"{type(model).__name__} has no experts_implementation")
    model.set_experts_implementation(implementation)
    with torch.no_grad():
        return model(_ids(), use_cache=False).logits


@pytest.mark.parametrize("family", _families("olmoe"))
def test_experts_implementation_is_honoured(family: str) -> None:
    mocks = {name: Mock(wraps=hf_moe.ALL_EXPERTS_FUNCTIONS[name]) for name in IMPLEMENTATIONS[1:]}
    with patch.dict(hf_moe.ALL_EXPERTS_FUNCTIONS._global_mapping, mocks):
        for implementation in IMPLEMENTATIONS:
            patched = _with_implementation(family, implementation, patched=True)
            for name, mock in mocks.items():
                assert mock.called == (name == implementation), (implementation, name)
                mock.reset_mock()
            original = _with_implementation(family, implementation, patched=False)
            for mock in mocks.values():
                mock.reset_mock()
            torch.testing.assert_close(patched, original, rtol=1e-5, atol=1e-5)


def test_dynroute_is_the_default_implementation_and_remove_restores(tmp_path: Path) -> None:
    model = apply_routing(build_tiny("olmoe"), "top_k")
    assert model.config._experts_implementation == DYNROUTE_EXPERTS
    assert {b.experts_implementation for b in adapted_blocks(model)} == {DYNROUTE_EXPERTS}
    remove_routing(model)
    assert model.config._experts_implementation not in (None, DYNROUTE_EXPERTS)
    # a non-default choice made at load time is kept
    build_tiny("olmoe").save_pretrained(tmp_path)
    loaded = transformers.OlmoeForCausalLM.from_pretrained(
        tmp_path, experts_implementation="batched_mm"
    )
    apply_routing(loaded, "top_p", p=0.5)
    assert {b.experts_implementation for b in adapted_blocks(loaded)} == {"batched_mm"}
    with torch.no_grad():
        loaded(_ids())  # a dynamic router's routing through transformers' batched_mm


def test_counters_follow_the_model_and_are_not_module_state() -> None:
    with torch.device("meta"):
        model = apply_routing(build_tiny("olmoe"), "top_k")  # built on meta, as from_pretrained
    names = {n for n, _ in model.named_buffers()} | set(model.state_dict())
    assert not any("counter" in n for n in names)
    model.to_empty(device="cpu")
    assert {str(b.counters.tokens.device) for b in adapted_blocks(model)} == {"cpu"}
    assert routing_stats(model)["tokens"] == 0


@pytest.mark.parametrize("family", _families("olmoe", sorted(WITH_AUX_LOSS)))
def test_deepcopy_after_training_step(family: str) -> None:
    model = _patched(family, "top_p", p=0.5).train()
    ids = _ids()
    loss = model(ids, labels=ids).loss + router_aux_loss(model)
    loss.backward()
    twin = copy.deepcopy(model)  # failed while blocks kept the step's non-leaf tensors
    assert all(b.last_for_loss is None for b in adapted_blocks(twin))
    assert all(b.last_for_loss is not None for b in adapted_blocks(model))
    model.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(ids).logits, model(ids).logits, rtol=0, atol=0)
    model.train()
    model(ids, labels=ids).loss.backward()  # the original still trains after the copy
    assert router_aux_loss(model).requires_grad


def test_training_step_with_expert_width_not_16_byte_aligned() -> None:
    """transformers' Mixtral tests use 37-wide experts: the [rows, 2*37] float32 output
    gradient is not 16-byte aligned, so grouped_mm's backward would fail on CPU; the
    forward takes the slice loop under autograd instead (found by the suite run)."""
    config = transformers.MixtralConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    model = apply_routing(transformers.MixtralForCausalLM(config).train(), "top_k")
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
