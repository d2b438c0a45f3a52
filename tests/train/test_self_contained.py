"""Issue 18: a run's model/ folder is self-contained and every command scores the same set."""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer

from dynroute.analysis import analyze_checkpoint
from dynroute.analysis.report import render_report
from dynroute.analysis.table import findings, layer_pattern
from dynroute.checkpoints import load_model
from dynroute.data import encode_documents, num_eval_windows
from dynroute.data.batches import eval_window_starts, eval_windows, iter_eval_batches
from dynroute.train import load_config, train
from dynroute.train.evaluate import evaluate_checkpoint
from dynroute.train.metrics import read_metrics
from train.robust_helpers import cli, write_config, write_texts


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train on a text folder, then move the folder away (as a user tidying up would)."""
    root = tmp_path_factory.mktemp("self_contained")
    mp = pytest.MonkeyPatch()
    mp.setenv("DYNROUTE_CACHE", str(root / "cache"))
    try:
        texts = write_texts(root / "texts")
        cfg = load_config(write_config(root / "tiny.toml", texts))
        train(cfg, root / "run", progress=False)
    finally:
        mp.undo()
    moved = root / "elsewhere"
    shutil.move(texts, moved)
    shutil.rmtree(root / "cache")  # nor is the cached corpus any help
    return {"root": root, "run": root / "run", "moved": moved}


def test_model_folder_holds_a_tokenizer_transformers_loads(moved_run: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    model_dir = moved_run["run"] / "model"
    ours = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    theirs = AutoTokenizer.from_pretrained(model_dir)
    text = "the router sends each token to the experts\nharder tokens ünïcode 123"
    assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text).ids
    assert theirs.eos_token == "<|endoftext|>"
    assert theirs.decode(ours.encode(text).ids) == text


def test_eval_and_analyze_after_the_text_moved(moved_run: dict[str, Path], tmp_path: Path) -> None:
    run, moved = moved_run["run"], moved_run["moved"]
    final = [r for r in read_metrics(run / "metrics.jsonl", "eval") if r["step"] == 8][-1]

    default = evaluate_checkpoint(run)  # the run's own evaluation set: the logged loss
    assert default["val_loss"] == pytest.approx(final["val_loss"], rel=1e-6)
    assert default["eval_tokens"] == final["eval_tokens"] == 3 * 4 * 32

    copied = tmp_path / "copy"  # model/ alone, somewhere else
    shutil.copytree(run / "model", copied)
    assert evaluate_checkpoint(copied)["val_loss"] == pytest.approx(final["val_loss"], rel=1e-6)

    # --data FILE: the whole file, encoded with the run's tokenizer (as for HF models).
    file = moved.parent / "other.txt"  # other text: a few of the lines, kept small
    file.write_text("".join((moved / "part1.txt").read_text().splitlines(True)[:30]))
    on_file = evaluate_checkpoint(run, data=str(file))
    tok = Tokenizer.from_file(str(run / "model" / "tokenizer.json"))
    ids = encode_documents(tok, [file.read_text()])
    assert on_file["eval_tokens"] == num_eval_windows(ids, 32) * 32
    assert "the whole file" in on_file["eval_set"]

    args = {"progress": False, "max_tokens": 1024}
    stats = analyze_checkpoint(run, tmp_path / "an", data=str(moved), **args)
    assert stats["meta"]["num_tokens"] == 1024


@pytest.fixture(scope="module")
def own_stats(moved_run: dict[str, Path]) -> dict:
    """``dynroute analyze RUN`` with its defaults, after the text moved."""
    return analyze_checkpoint(moved_run["run"], moved_run["root"] / "analysis", progress=False)


def test_analyze_defaults_to_the_run_evaluation_set(
    moved_run: dict[str, Path], own_stats: dict
) -> None:
    final = [r for r in read_metrics(moved_run["run"] / "metrics.jsonl", "eval")][-1]
    assert own_stats["meta"]["num_tokens"] == final["eval_tokens"]
    expected = final["mean_experts_per_token"]
    assert own_stats["experts_per_token"] == pytest.approx(expected, rel=1e-5)


def test_eval_cli_after_the_text_moved(moved_run: dict[str, Path]) -> None:
    run = moved_run["run"]
    done = cli("eval", run, "--json", cache=moved_run["root"] / "cache2", in_process=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "the run's evaluation set" in result["eval_set"]
    assert load_model(run).step == 8


@given(st.integers(1, 500), st.integers(0, 600))
def test_eval_windows_are_evenly_spread_and_distinct(n: int, m: int) -> None:
    starts = eval_window_starts(n, m).tolist()
    assert len(starts) == min(n, m)
    assert starts == sorted(set(starts)) and all(0 <= s < n for s in starts)
    if m >= 2:
        assert starts[0] == 0 and starts[-1] == n - 1  # both ends of the split
    if 2 <= m < n:  # no gap more than twice the even spacing
        assert max(b - a for a, b in itertools.pairwise(starts)) <= 2 * (n / m) + 1


def test_iter_eval_batches_on_windows_equals_on_tokens() -> None:
    tokens = np.arange(1000)
    a = [x.tolist() for x, _ in iter_eval_batches(tokens, 4, 16, 3)]
    b = [x.tolist() for x, _ in iter_eval_batches(eval_windows(tokens, 16, 12), 4, 16)]
    assert a == b and a[-1][-1][0] == 61 * 16  # the last window of the split is in


def test_layer_caption_is_computed_from_the_data(own_stats: dict, tmp_path: Path) -> None:
    """Upper layers using more experts must never be captioned as lower layers using more."""
    upper = {"experts_per_layer": [1.2, 1.4, 2.1, 2.73], "meta": {"layer_indices": [0, 1, 2, 3]}}
    assert layer_pattern(**_args(upper)).endswith("upper layers use more (2.42 vs 1.30)")
    assert "most in layer 3 (2.73)" in layer_pattern(**_args(upper))
    lower = {"experts_per_layer": [2.5, 1.0], "meta": {"layer_indices": [4, 5]}}
    assert layer_pattern(**_args(lower)) == (
        "most in layer 4 (2.50), fewest in layer 5 (1.00); lower layers use more (2.50 vs 1.00)"
    )
    flat = {"experts_per_layer": [1.52, 1.52, 1.521], "meta": {}}
    assert layer_pattern(**_args(flat)) == "every layer uses 1.52 experts per token"

    # A real stats dict of the 2-layer run, its upper layer made the busier one.
    stats = {**own_stats, "experts_per_layer": [1.12, 2.0]}
    assert findings(stats)[0] == (
        "Experts per token by layer: most in layer 1 (2.00), fewest in layer 0 (1.12); "
        "upper layers use more (2.00 vs 1.12)."
    )
    page = render_report({"run": stats}, tmp_path / "page").read_text()
    assert "run: most in layer 1 (2.00)" in page
    assert "upper layers use more" in page and "lower layers use more" not in page


def _args(stats: dict) -> dict:
    return {"per_layer": stats["experts_per_layer"], "layers": stats["meta"].get("layer_indices")}


def test_patch_rejects_a_bad_p_before_loading(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dynroute.cli import app

    start = time.perf_counter()
    done = CliRunner().invoke(app, ["patch", str(tmp_path), "--router", "top_p:p=1.5"])
    assert time.perf_counter() - start < 1.0
    assert done.exit_code != 0 and "p must be in (0, 1]" in done.output
