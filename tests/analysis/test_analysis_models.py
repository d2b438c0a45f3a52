"""The recorder on real model classes: DynMoE (every router) and an adapted transformers MoE."""

import pytest
import torch

from dynroute.analysis import RoutingRecorder, analyze_model
from dynroute.models import DynMoEConfig, DynMoEForCausalLM

ROUTER_SETTINGS = [
    {"router": "top_k", "k": 2},
    {"router": "top_p", "p": 0.4},
    {"router": "null_experts", "k": 2, "num_null": 2},
    {"router": "expert_choice", "capacity_factor": 1.0},
]


def tiny_dynmoe(**kw) -> DynMoEForCausalLM:
    cfg = dict(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=16, num_experts=4)
    return DynMoEForCausalLM(DynMoEConfig(**{**cfg, **kw}))


@pytest.mark.parametrize("router", ROUTER_SETTINGS, ids=lambda r: r["router"])
def test_every_router_analyses(router):
    torch.manual_seed(0)
    model = tiny_dynmoe(**router)
    stats = analyze_model(model, torch.randint(0, 64, (1 + 4 * 16,)), seq_len=16, progress=False)
    assert len(stats["experts_per_layer"]) == 2
    assert stats["meta"]["num_tokens"] == 64
    total = sum(stats["experts_hist"])
    assert total == 2 * 64  # every (token, layer) pair counted once, zero-expert tokens too
    for lay in stats["layers"]:
        k_mean = sum(k * c for k, c in enumerate(lay["experts_hist"])) / 64
        assert lay["mean_experts"] == pytest.approx(k_mean, abs=1e-6)
        assert sum(lay["expert_tokens"]) == sum(k * c for k, c in enumerate(lay["experts_hist"]))


def test_dense_layers_keep_their_numbers():
    model = tiny_dynmoe(n_layers=4, moe_every=2)
    rec = RoutingRecorder()
    assert rec.attach_model(model) == 2
    x = torch.randint(0, 64, (1, 8))
    rec.begin_batch(x)
    model(x)
    rec.end_batch(None)
    moe_blocks = [i for i, b in enumerate(model.blocks) if b.ffn in model.moe_layers()]
    assert sorted(rec.layers) == moe_blocks


def tiny_mixtral(vocab_size: int = 64):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )
    return MixtralForCausalLM(cfg)


def test_adapted_transformers_model_is_recorded():
    from dynroute.hf import adapted_blocks, apply_routing

    torch.manual_seed(0)
    model = apply_routing(tiny_mixtral(), "top_p", p=0.6)
    stats = analyze_model(model, torch.randint(0, 64, (1 + 2 * 16,)), seq_len=16, progress=False)
    assert stats["meta"]["layer_indices"] == [0, 1]
    assert all(1.0 <= k <= 4.0 for k in stats["experts_per_layer"])
    assert stats["mean_loss"] is not None
    # The callback analyze_model installed is gone afterwards.
    assert all(b.routing_callback is None for b in adapted_blocks(model))


def test_transformers_checkpoint_with_its_tokenizer(tmp_path):
    from dynroute.analysis import analyze_checkpoint
    from dynroute.data import as_hf_tokenizer, train_tokenizer
    from dynroute.hf import apply_routing, save_patched

    text = "".join(f"x{i} = {i} * y\n" for i in range(2000))
    (tmp_path / "text.txt").write_text(text)
    tok = train_tokenizer([text], vocab_size=300)
    model = apply_routing(tiny_mixtral(tok.get_vocab_size()), "top_p", p=0.6)
    save_patched(model, tmp_path / "mix")
    as_hf_tokenizer(tok).save_pretrained(tmp_path / "mix")
    stats = analyze_checkpoint(
        tmp_path / "mix",
        tmp_path / "out",
        data=tmp_path / "text.txt",
        max_tokens=256,
        seq_len=32,
        progress=False,
    )
    assert stats["meta"]["model_type"] == "mixtral" and stats["meta"]["num_tokens"] == 256
    assert stats["meta"]["router"] == "top_p(p=0.6)"  # the saved routing was re-applied
    assert (tmp_path / "out" / "stats.json").is_file()
