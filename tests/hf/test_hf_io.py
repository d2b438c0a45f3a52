"""calibrate_p, save/load of patched checkpoints, evaluate_text and `dynroute patch`."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dynroute.cli import app
from dynroute.hf import (
    CheckpointError,
    adapted_blocks,
    apply_routing,
    calibrate_p,
    evaluate_text,
    is_hf_moe_checkpoint,
    load_patched,
    routing_stats,
    save_patched,
)
from hf.tiny_models import build_tiny

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
CALIB = torch.randint(0, 128, (256,), generator=torch.Generator().manual_seed(4))


def test_calibrate_p_hits_the_target_for_the_model(tiny):
    model = tiny("olmoe")
    cal = calibrate_p(model, CALIB, target_experts=1.5, seq_len=64, tol=0.02)
    assert abs(cal.mean_experts - 1.5) <= 0.05
    assert isinstance(cal.p, float) and 0 < cal.p < 1
    assert all(b.spec.kwargs["p"] == cal.p for b in adapted_blocks(model))
    # bisection: the trials' means move towards the target
    assert abs(cal.steps[-1]["mean_experts"]["all"] - 1.5) <= abs(
        cal.steps[0]["mean_experts"]["all"] - 1.5
    )


def test_calibrate_p_per_layer(tiny):
    model = tiny("mixtral")
    cal = calibrate_p(model, CALIB, target_experts=3.0, per_layer=True, seq_len=64, tol=0.05)
    assert set(cal.p) == {0, 1}
    assert all(abs(m - 3.0) <= 0.25 for m in cal.per_layer.values()), cal.per_layer
    assert {b.layer_index: b.spec.kwargs["p"] for b in adapted_blocks(model)} == cal.p


def test_calibrate_p_rejects_unreachable_targets(tiny):
    with pytest.raises(ValueError, match=r"target_experts must be in \[1, 8\]"):
        calibrate_p(tiny("olmoe"), CALIB, target_experts=0.5)
    with pytest.raises(ValueError, match="text needs a tokenizer"):
        calibrate_p(tiny("olmoe"), ["some text"], target_experts=2.0)


def test_save_and_load_patched_round_trip(tmp_path):
    model = apply_routing(build_tiny("qwen2_moe"), "top_p", p=0.4, max_experts=3)
    apply_routing(model, "null_experts", null_logit=0.5, layers=[1])
    with torch.no_grad():
        ref = model(IDS).logits
    save_patched(model, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["dynroute_routing"]
    assert saved["layers"] == {
        "0": {"router": "top_p", "p": 0.4, "max_experts": 3},
        "1": {"router": "null_experts", "null_logit": 0.5},
    }
    assert is_hf_moe_checkpoint(tmp_path / "out") and not is_hf_moe_checkpoint(tmp_path)

    loaded = load_patched(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, ref)

    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():  # plain transformers loading gives the original top-k routing
        orig = apply_routing(build_tiny("qwen2_moe"), "top_k")(IDS).logits
        torch.testing.assert_close(plain(IDS).logits, orig, rtol=0, atol=1e-5)


def test_load_patched_rejects_other_models(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=128, hidden_size=32).save_pretrained(tmp_path)
    assert not is_hf_moe_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="model_type 'llama' is not a supported"):
        load_patched(tmp_path)


def test_evaluate_text_on_a_checkpoint_folder(tiny_dir, text_file):
    out = evaluate_text(tiny_dir, text_file, seq_len=64, progress=False)
    assert out["mean_experts"] == 2.0 and out["expert_fraction"] == 1.0
    assert out["mean_experts_per_layer"] == {"0": 2.0, "1": 2.0}
    assert 1.0 < out["perplexity"] < 1e4 and out["tokens_per_s"] > 0
    assert out["tokens"] == 640 - 10  # 640 characters, one unpredicted token per window
    # the keys `dynroute eval` prints for its own checkpoints are there too
    assert out["experts_per_layer"] == [2.0, 2.0] and out["eval_tokens"] == out["tokens"]
    assert out["expert_param_ratio"] == out["activated_param_ratio"] == 1.0
    assert out["param_ratio_reference"] == "its own top-2"  # the label `dynroute eval` prints
    assert out["router"] == "top_k()" and out["val_loss"] == out["loss"]

    model = apply_routing(load_patched(tiny_dir), "top_p", p=0.3)
    dyn = evaluate_text(model, text_file, seq_len=64, progress=False)
    assert dyn["mean_experts"] < 2.0 and dyn["routing"]["layers"]["0"]["p"] == 0.3
    assert dyn["perplexity"] != out["perplexity"]
    assert dyn["expert_param_ratio"] == pytest.approx(dyn["mean_experts"] / 2)
    assert dyn["expert_param_ratio"] < dyn["activated_param_ratio"] < 1.0


def test_evaluate_text_defaults_to_stdlib_sample(tiny_dir):
    out = evaluate_text(tiny_dir, None, seq_len=64, max_batches=2, batch_size=2, progress=False)
    assert out["text"] == "stdlib sample" and out["eval_tokens"] == 4 * 63


def test_evaluate_text_leaves_an_unpatched_model_unpatched(tiny_dir, text_file):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    out = evaluate_text(model, text_file, seq_len=64, progress=False)
    assert out["mean_experts"] == 2.0 and not adapted_blocks(model)


def test_patch_command_saves_a_patched_checkpoint(tiny_dir, text_file, tmp_path):
    out_dir = tmp_path / "patched"
    args = ["patch", str(tiny_dir), "--router", "top_p:p=0.3", "--data", str(text_file)]
    result = CliRunner().invoke(app, [*args, "--seq-len", "64", "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    assert "original (top_k)" in result.output and "top_p(p=0.3)" in result.output
    config = json.loads((out_dir / "config.json").read_text())
    assert config["dynroute_routing"]["layers"]["1"] == {"router": "top_p", "p": 0.3}
    report = json.loads((out_dir / "dynroute_patch_report.json").read_text())
    assert report["patched"]["mean_experts"] < report["original"]["mean_experts"] == 2.0
    assert (out_dir / "tokenizer.json").is_file()
    model = load_patched(out_dir)
    with torch.no_grad():
        model(IDS)
    assert routing_stats(model)["mean_experts"] < 2.0


def test_patch_command_calibrates_to_a_target(tiny_dir):
    args = ["patch", str(tiny_dir), "--target-experts", "1.5", "--max-tokens", "512"]
    result = CliRunner().invoke(app, [*args, "--seq-len", "64"])  # default text: stdlib
    assert result.exit_code == 0, result.output
    assert "calibrated p =" in result.output and "not saved" in result.output
    assert "Python stdlib" in result.output


def test_patch_command_needs_a_tokenizer(tmp_path):
    build_tiny("olmoe").save_pretrained(tmp_path / "m")
    result = CliRunner().invoke(app, ["patch", str(tmp_path / "m"), "--router", "top_p:p=0.5"])
    assert result.exit_code == 2
    assert "has no tokenizer" in " ".join(result.output.split())  # rich wraps lines
