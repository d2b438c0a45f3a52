"""benchmarks/replicate_topp.py runs end to end on the frontier engine (tiny model, 2 steps)."""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "replicate_topp.py"
TINY = """
[model]
d_model = 32
n_layers = 2
n_heads = 2
d_ff = 32
num_experts = 4
expert_layout = "per_expert"

[data]
source = "{corpus}"
vocab_size = 320

[train]
steps = 2
batch_size = 4
seq_len = 32
warmup_steps = 1
log_interval = 1
checkpoint_interval = 2
threads = 1
"""


def _run(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join((stdlib / n).read_text() for n in ("textwrap.py", "shlex.py")))
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(corpus=corpus))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env["DYNROUTE_CACHE"] = str(tmp_path / "cache")
    cmd = [sys.executable, str(SCRIPT), "--config", str(config), "--seeds", "1"]
    cmd += ["--ps", "0.4", "--final-eval-batches", "2", "--no-progress"]
    cmd += ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r.json")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_replicate_topp_trains_compares_and_reuses(tmp_path: Path) -> None:
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    payload = json.loads((tmp_path / "r.json").read_text())
    assert set(payload) >= {"meta", "rows", "runs", "markdown", "config", "command"}
    assert list(payload["runs"]) == ["top1-s0", "top2-s0", "top_p0.4-s0"]
    for run in payload["runs"].values():
        assert {"val_loss", "mean_experts_per_token", "activated_param_ratio"} <= set(run)
        assert run["train_tokens"] == 2 * 4 * 32 and not run["reused"]
    top1, top2, top_p = payload["rows"]
    assert top2["activated_param_ratio_mean"] == 1.0 and top2["delta_vs_top2_mean"] == 0.0
    assert top1["expert_param_ratio_mean"] == 0.5 and top1["verdict"] == "reference"
    assert top_p["router"] == "top_p(p=0.4)" and top_p["frontier_verdict"] is not None
    assert payload["meta"]["eval_tokens"] == 2 * 4 * 32  # --final-eval-batches 2
    assert "| top_p(p=0.4) |" in payload["markdown"] and "| top_p(p=0.4) |" in first.stdout

    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = json.loads((tmp_path / "r.json").read_text())
    assert all(r["reused"] for r in rerun["runs"].values())
    loss = [r["val_loss_mean"] for r in payload["rows"]]
    assert [r["val_loss_mean"] for r in rerun["rows"]] == loss


def test_replicate_topp_examples() -> None:
    spec = importlib.util.spec_from_file_location("replicate_topp", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
