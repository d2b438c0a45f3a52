"""KV-cache generation: token for token the same as recomputing the whole sequence."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynroute.models import DynMoEConfig, DynMoEForCausalLM

# per-token routers: a token's experts do not depend on the other tokens of the batch
ROUTERS = {
    "top_k": {"k": 2},
    "top_p": {"p": 0.4},
    "null_experts": {"k": 2, "num_null": 1},
    "dynmole": {},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(router: str = "top_p", max_seq_len: int = 48, **kw: object) -> DynMoEForCausalLM:
    torch.manual_seed(0)
    cfg = DynMoEConfig(
        vocab_size=61, d_model=32, n_layers=2, n_heads=2, d_ff=32, num_experts=4,
        router=router, max_seq_len=max_seq_len, **{**ROUTERS[router], **kw},
    )  # fmt: skip
    return DynMoEForCausalLM(cfg).eval()


def greedy(model: DynMoEForCausalLM, ids: torch.Tensor, new: int, use_cache: bool, **kw: object):
    return model.generate(
        ids, max_new_tokens=new, do_sample=False, use_cache=use_cache, pad_token_id=60,
        return_dict_in_generate=True, output_scores=True, **kw,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("router", "batch"), [*((r, 3) for r in ROUTERS), ("top_k", 1), ("top_p", 1)]
)
def test_cached_greedy_generation_equals_recomputation(router: str, batch: int) -> None:
    model = tiny(router)
    ids = torch.randint(0, 60, (batch, 7))
    cached, full = greedy(model, ids, 20, True), greedy(model, ids, 20, False)
    assert torch.equal(cached.sequences, full.sequences)
    for a, b in zip(cached.scores, full.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_cached_generation_past_the_window_still_equals_recomputation() -> None:
    model = tiny("top_p", max_seq_len=16)
    ids = torch.randint(0, 60, (2, 5))
    cached, full = greedy(model, ids, 30, True), greedy(model, ids, 30, False)
    assert cached.sequences.shape == (2, 35)
    assert torch.equal(cached.sequences, full.sequences)


@settings(max_examples=4)
@given(prompt=st.integers(1, 12), steps=st.integers(1, 6), batch=st.integers(1, 3))
def test_decoding_step_by_step_matches_the_full_forward(
    prompt: int, steps: int, batch: int
) -> None:
    model = tiny("top_p")
    ids = torch.randint(0, 60, (batch, prompt + steps))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :prompt], use_cache=True)
        logits = [out.logits]
        for i in range(prompt, prompt + steps):
            out = model(ids[:, i : i + 1], past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-5, rtol=1e-5)


def test_decoding_routes_only_the_new_tokens() -> None:
    model = tiny("top_p")
    routed: list[int] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: routed.append(out[1].routing.num_tokens))
        for layer in model.moe_layers()
    ]
    greedy(model, torch.randint(0, 60, (3, 7)), 5, True)
    for h in hooks:
        h.remove()
    layers = len(model.moe_layers())
    assert routed[:layers] == [3 * 7] * layers  # the prompt, once
    assert routed[layers:] == [3] * (4 * layers)  # then one token per row per step


@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_equals_each_prompt_alone(use_cache: bool) -> None:
    model = tiny("top_p")
    short, long = torch.randint(0, 60, (1, 4)), torch.randint(0, 60, (1, 9))
    pad = torch.full((1, 5), 60)
    ids = torch.cat([torch.cat([pad, short], 1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 5), torch.ones(1, 4)], 1), torch.ones(1, 9)]).long()
    batched = greedy(model, ids, 12, use_cache, attention_mask=mask).sequences
    alone = [greedy(model, p, 12, use_cache).sequences for p in (short, long)]
    assert torch.equal(batched[0, 5:], alone[0][0])
    assert torch.equal(batched[1], alone[1][0])


def test_a_cache_past_max_seq_len_is_refused_with_a_clear_error() -> None:
    model = tiny("top_k", max_seq_len=8)
    out = model(torch.randint(0, 60, (1, 6)), use_cache=True)
    with pytest.raises(ValueError, match="exceeds max_seq_len 8"):
        model(torch.randint(0, 60, (1, 3)), past_key_values=out.past_key_values, use_cache=True)
