"""End-to-end prepare_data with caching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dynroute.data as data_mod
from dynroute.data import prepare as prepare_mod
from dynroute.data.cache import default_cache_dir


def _corpus(root: Path) -> Path:
    root.mkdir()
    for i in range(30):
        (root / f"mod_{i}.py").write_text(f"def f{i}(a, b):\n    return a + b * {i}\n" * 20)
    return root


def test_prepare_folder_and_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _corpus(tmp_path / "src")
    cache = tmp_path / "cache"
    data = data_mod.prepare_data(src, vocab_size=300, cache_dir=cache)
    assert data.vocab_size == data.tokenizer.get_vocab_size() <= 300
    assert data.eos_id == 0
    assert data.train_tokens.dtype == np.uint16 and data.val_tokens.dtype == np.uint16
    assert len(data.train_tokens) > len(data.val_tokens) > 0
    assert int(data.train_tokens.max()) < data.vocab_size
    assert (data.cache_path / "train.bin").is_file()
    x, _ = data.train.batch(2, 16)
    assert x.shape == (2, 16)
    assert data.hf_tokenizer().eos_token_id == 0

    def boom(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("corpus re-read despite a warm cache")

    monkeypatch.setattr(prepare_mod, "load_corpus", boom)
    again = data_mod.prepare_data(src, vocab_size=300, cache_dir=cache)
    assert np.array_equal(again.train_tokens, data.train_tokens)
    assert np.array_equal(again.val_tokens, data.val_tokens)


def test_prepare_stdlib_small(tmp_path: Path) -> None:
    data = data_mod.prepare_data(
        None, vocab_size=512, cache_dir=tmp_path, max_train_bytes=150_000, max_val_bytes=50_000
    )
    assert data.corpus_key.startswith("stdlib-")
    assert len(data.train_tokens) > 10_000
    text = data.tokenizer.decode(data.val_tokens[:200].tolist())
    assert isinstance(text, str) and text


def test_cache_dir_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNROUTE_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    monkeypatch.delenv("DYNROUTE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "dynroute"


def test_public_api_exports() -> None:
    for name in data_mod.__all__:
        assert hasattr(data_mod, name), name
