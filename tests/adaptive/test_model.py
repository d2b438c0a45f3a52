"""The adaptive model: forced routes are exact, routing modes, save/load, generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynroute.adaptive import BIG, SKIP, SMALL, AdaptiveConfig, AdaptiveForCausalLM
from dynroute.models import DynMoEConfig, DynMoEForCausalLM

L = 3


def adaptive(**kw: object) -> AdaptiveForCausalLM:
    cfg = AdaptiveConfig(
        vocab_size=40, d_model=32, n_layers=L, n_heads=2, d_ff=64, small_ratio=8, **kw
    )
    return AdaptiveForCausalLM(cfg).eval()


def dense_copy(model: AdaptiveForCausalLM, module: int) -> DynMoEForCausalLM:
    """A dense DynMoE model (every FFN a plain SwiGLU) holding the big or small weights."""
    c = model.config
    d_ff = c.d_ff if module == BIG else c.small_ff
    cfg = DynMoEConfig(
        vocab_size=c.vocab_size, d_model=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads,
        d_ff=d_ff, moe_every=c.n_layers + 1,  # no layer is an MoE layer
    )  # fmt: skip
    dense = DynMoEForCausalLM(cfg).eval()
    state = {k: v for k, v in model.state_dict().items() if ".ffn." not in k}
    for i, block in enumerate(model.blocks):
        part = block.ffn.experts.parts[module]
        state[f"blocks.{i}.ffn.gate_up.weight"] = part.gate_up[0].t()
        state[f"blocks.{i}.ffn.down.weight"] = part.down[0].t()
    dense.load_state_dict(state)
    return dense


@pytest.mark.parametrize("module", [BIG, SMALL])
def test_forced_module_equals_dense_model(module: int) -> None:
    model = adaptive()
    ids = torch.randint(0, 40, (3, 11))
    routes = torch.full((3, 11, L), module, dtype=torch.long)
    got = model(ids, labels=ids, routes=routes)
    want = dense_copy(model, module)(ids, labels=ids)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, want.loss)
    # eval-mode default of a random-routing model is all big
    if module == BIG:
        torch.testing.assert_close(model(ids).logits, want.logits, rtol=1e-5, atol=1e-5)


def test_skip_everywhere_is_attention_only() -> None:
    model = adaptive()
    ids = torch.randint(0, 40, (2, 7))
    out = model(ids, routes=torch.full((2, 7, L), SKIP, dtype=torch.long))
    for block in model.blocks:  # zero FFNs: the same as skipping
        for p in block.ffn.experts.parameters():
            p.data.zero_()
    torch.testing.assert_close(out.logits, model(ids).logits)
    assert out.experts_per_layer.tolist() == [0.0] * L


def test_mixed_routes_per_token_are_independent_of_other_tokens_future() -> None:
    model = adaptive()
    ids = torch.randint(0, 40, (1, 9))
    routes = torch.randint(0, 3, (1, 9, L))
    base = model(ids, routes=routes).logits
    changed = routes.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 3  # causal: positions < 5 unaffected
    other = model(ids, routes=changed).logits
    torch.testing.assert_close(base[:, :5], other[:, :5])
    assert not torch.allclose(base[:, 5:], other[:, 5:])


def test_random_routing_share_and_router_modes() -> None:
    model = adaptive(p_big=0.3, p_skip=0.2).train()
    out = model(torch.randint(0, 40, (8, 64)))
    share = [float((out.choices == c).float().mean()) for c in (BIG, SMALL, SKIP)]
    assert abs(share[0] - 0.3) < 0.05 and abs(share[2] - 0.2) < 0.05
    router = adaptive(routing="router", skip=True).train()
    out = router(torch.randint(0, 40, (2, 8)), labels=torch.randint(0, 40, (2, 8)))
    assert out.p_big is not None and out.p_big.shape == (L,) and out.aux_loss > 0
    out.loss.backward()
    assert router.blocks[0].ffn.gate.weight.grad is not None
    router.eval()
    hard = router(torch.randint(0, 40, (2, 8)))
    assert hard.p_big is None and set(hard.choices.unique().tolist()) <= {0, 1, 2}


def test_save_load_generate(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = adaptive(routing="router")
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(again, AdaptiveForCausalLM) and again.config.routing == "router"
    ids = torch.randint(0, 40, (1, 5))
    torch.testing.assert_close(model(ids).logits, again(ids).logits)
    gen = again.generate(ids, max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, 8)


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="routing must be one of"):
        AdaptiveConfig(routing="oracle")
    with pytest.raises(ValueError, match="p_big"):
        AdaptiveConfig(p_big=0.8, p_skip=0.5)
