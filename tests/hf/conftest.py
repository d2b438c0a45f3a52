"""Fixtures: tiny models, a saved tiny checkpoint with a tokenizer, a text file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from torch import nn

from hf.tiny_models import build_tiny, char_tokenizer


@pytest.fixture
def tiny() -> Callable[..., nn.Module]:
    return build_tiny


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """A saved tiny OLMoE checkpoint with a tokenizer, as a user's MODEL_DIR."""
    path = tmp_path / "olmoe-tiny"
    build_tiny("olmoe").save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "sample.txt"
    path.write_text("def add(a, b):\n    return a + b\n\n" * 20)
    return path
