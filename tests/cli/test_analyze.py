"""`dynroute analyze`: checkpoint, --compare and --render modes, and clear errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from dynroute.cli import app

runner = CliRunner()

TEXT = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(1500))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny saved DynMoE models (top-k and top-p) with a tokenizer.json beside them."""
    from dynroute.data import train_tokenizer
    from dynroute.models import DynMoEConfig, DynMoEForCausalLM

    root = tmp_path_factory.mktemp("ckpt")
    data = root / "text.py"
    data.write_text(TEXT)
    tok = train_tokenizer([TEXT], vocab_size=300)
    out = {}
    routers = {"topk": {"router": "top_k", "k": 2}, "topp": {"router": "top_p:p=0.4"}}
    for name, router in routers.items():
        cfg = DynMoEConfig(
            vocab_size=tok.get_vocab_size(),
            d_model=16,
            n_layers=2,
            n_heads=2,
            d_ff=16,
            num_experts=4,
            max_seq_len=64,
            **router,
        )
        folder = root / name
        DynMoEForCausalLM(cfg).save_pretrained(folder)
        tok.save(str(folder / "tokenizer.json"))
        out[name] = folder
    return out, data


def _analyze(*args):
    result = runner.invoke(app, ["analyze", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_analyze_compare_and_rerender(checkpoints, tmp_path):
    ckpts, data = checkpoints
    common = ["--data", data, "--max-tokens", 512, "--seq-len", 32, "--segments", "4,8"]
    single = tmp_path / "topk"
    result = _analyze(ckpts["topk"], "--out", single, *common)
    assert "experts / token" in result.output and "report.html" in result.output
    stats = json.loads((single / "stats.json").read_text())
    assert stats["meta"]["num_tokens"] == 512 and stats["meta"]["router"] == "top_k(k=2)"
    assert stats["experts_per_layer"] == [2.0, 2.0]
    assert set(stats["cache_hit_rate"]) == {"4", "8"}
    assert stats["layers"][0]["top_tokens"][0][0]["text"]  # decoded with the tokenizer
    assert (single / "report.html").is_file()

    # An analysis folder and a checkpoint side by side.
    cmp = tmp_path / "cmp"
    result = _analyze("--compare", single, ckpts["topp"], "--out", cmp, *common)
    assert "topk" in result.output and "topp" in result.output
    assert (cmp / "topp" / "stats.json").is_file()
    (cmp / "report.html").unlink()
    _analyze("--render", cmp)  # from the stats files alone
    page = (cmp / "report.html").read_text()
    assert "topk vs topp" in page and "data:image/png;base64," in page


def test_analyze_errors_are_one_clear_line(tmp_path):
    def fails(*args: str) -> str:
        result = runner.invoke(app, ["analyze", *args])
        assert result.exit_code != 0
        return " ".join(result.output.split())  # undo rich's line wrapping

    assert "does not exist" in fails(str(tmp_path / "nope"))
    assert "no stats.json" in fails("--render", str(tmp_path))
    assert "exactly one of" in fails()
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert "model_type 'bert'" in fails(str(tmp_path))
    assert "comma-separated" in fails(str(tmp_path), "--segments", "4,x")
    if not torch.cuda.is_available():
        assert "CUDA is not available" in fails(str(tmp_path), "--device", "cuda")
