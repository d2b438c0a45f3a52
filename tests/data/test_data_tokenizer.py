"""Tokenizer training, caching and the transformers wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynroute.data import tokenizer as tok_mod
from dynroute.data.tokenizer import (
    EOS_TOKEN,
    as_hf_tokenizer,
    eos_id,
    get_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
)

TEXTS = [f"def func_{i}(x):\n    return x * {i}  # héllo\n" for i in range(200)]


def test_train_roundtrip_and_eos() -> None:
    tok = train_tokenizer(TEXTS, vocab_size=400)
    assert eos_id(tok) == 0
    assert tok.token_to_id(EOS_TOKEN) == 0
    assert 257 <= tok.get_vocab_size() <= 400
    for text in ["def f():\n    pass\n", "emoji 🙂 and ünïcödé", "  leading spaces"]:
        assert tok.decode(tok.encode(text).ids) == text
    with pytest.raises(ValueError, match=">= 257"):
        train_tokenizer(TEXTS, vocab_size=100)


def test_max_bytes_limits_sample() -> None:
    small = train_tokenizer(TEXTS, vocab_size=1000, max_bytes=200)
    big = train_tokenizer(TEXTS, vocab_size=1000)
    assert small.get_vocab_size() < big.get_vocab_size()


def test_get_tokenizer_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_tokenizer("corpus-a", TEXTS, 300, tmp_path)
    path = tmp_path / f"tokenizer-{tokenizer_fingerprint('corpus-a', 300)}" / "tokenizer.json"
    assert path.is_file() and (path.parent / "meta.json").is_file()
    mtime = path.stat().st_mtime_ns

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenizer was retrained despite a cache hit")

    def no_texts() -> list[str]:
        raise AssertionError("corpus loaded despite a cache hit")

    monkeypatch.setattr(tok_mod, "train_tokenizer", boom)
    second = get_tokenizer("corpus-a", no_texts, 300, tmp_path)
    assert second.to_str() == first.to_str()
    assert path.stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="retrained"):
        get_tokenizer("corpus-a", TEXTS, 320, tmp_path)  # other vocab -> new key


def test_get_tokenizer_recovers_from_corrupt_cache(tmp_path: Path) -> None:
    fp = tokenizer_fingerprint("c", 300)
    bad = tmp_path / f"tokenizer-{fp}" / "tokenizer.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("not json")
    tok = get_tokenizer("c", TEXTS, 300, tmp_path)
    assert eos_id(tok) == 0
    assert bad.read_text().startswith("{")


def test_as_hf_tokenizer() -> None:
    tok = train_tokenizer(TEXTS, vocab_size=300)
    before = tok.to_str()
    hf = as_hf_tokenizer(tok)
    assert hf.eos_token == EOS_TOKEN and hf.eos_token_id == 0 and hf.pad_token_id == 0
    ids = hf("def func_3(x):").input_ids
    assert ids == tok.encode("def func_3(x):").ids
    assert hf.decode(ids) == "def func_3(x):"
    assert tok.to_str() == before
