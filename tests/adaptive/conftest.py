"""Shared fixtures of the adaptive tests: a tiny config on a stdlib corpus, a private cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_runs import tiny_run

#: the adaptive model: a big and a small FFN per block (no experts), routed at random
MODEL = {"d_ff": 64, "num_experts": None, "small_ratio": 8, "routing": "random"}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("adaptive"), model=MODEL)


@pytest.fixture(autouse=True)
def _cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, keep_threads: None
) -> None:
    monkeypatch.setenv("DYNROUTE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
