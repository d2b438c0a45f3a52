"""``DYNROUTE_MAX_STEPS``: the one engine caps every run's steps, says so, and keeps the
capped run apart from the real one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynroute.train import ConfigMismatchError, load_config, train
from tiny_runs import tiny_run


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNROUTE_CACHE", str(tmp_path / "cache"))


def test_max_steps_caps_a_run_says_so_and_is_its_own_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    keep_threads: None,
) -> None:  # fmt: skip
    cfg = load_config(tiny_run(tmp_path, train={"steps": 8}))
    monkeypatch.setenv("DYNROUTE_MAX_STEPS", "3")
    result = train(cfg, tmp_path / "run", progress=False)
    assert (result.steps, result.tokens) == (3, 3 * 4 * 32)
    assert result.final is not None  # a complete short run: evaluated, exported
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert "DYNROUTE_MAX_STEPS=3: training 3 of 8 steps" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["train"]["steps"] == 3
    assert train(cfg, tmp_path / "run", progress=False).resumed_from == 3  # reused
    monkeypatch.delenv("DYNROUTE_MAX_STEPS")
    with pytest.raises(ConfigMismatchError, match=r"train.steps: 3 -> 8"):
        train(cfg, tmp_path / "run", progress=False)


def test_a_cap_above_the_steps_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    keep_threads: None,
) -> None:  # fmt: skip
    cfg = load_config(tiny_run(tmp_path, train={"steps": 2, "eval_interval": 0}))
    monkeypatch.setenv("DYNROUTE_MAX_STEPS", "50")
    assert train(cfg, tmp_path / "run", progress=False).steps == 2
    assert "DYNROUTE_MAX_STEPS" not in capsys.readouterr().err
