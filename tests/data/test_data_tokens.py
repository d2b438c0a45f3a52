"""Token files: encoding, memmap round trip, dtype and caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from dynroute.data import tokens as tokens_mod
from dynroute.data.tokenizer import train_tokenizer
from dynroute.data.tokens import (
    encode_documents,
    get_token_file,
    load_token_file,
    token_dtype,
    write_token_file,
)

DOCS = [f"class C{i}:\n    value = {i}\n" for i in range(50)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(DOCS, vocab_size=300)


def test_token_dtype() -> None:
    assert token_dtype(4096) == np.uint16
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32
    with pytest.raises(ValueError):
        token_dtype(0)


def test_encode_documents_appends_eos(tok: Tokenizer) -> None:
    ids = encode_documents(tok, DOCS[:3])
    assert ids.dtype == np.uint16
    assert (ids == 0).sum() == 3 and ids[-1] == 0
    expected = [i for d in DOCS[:3] for i in [*tok.encode(d).ids, 0]]
    assert ids.tolist() == expected


def test_long_documents_are_pieced_losslessly(
    tok: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens_mod, "_PIECE_CHARS", 64)
    doc = "".join(DOCS)
    ids = encode_documents(tok, [doc, "x"])
    assert (ids == 0).sum() == 2
    first = ids[: int(np.flatnonzero(ids == 0)[0])]
    assert tok.decode(first.tolist()) == doc


def test_write_load_roundtrip(tmp_path: Path, tok: Tokenizer) -> None:
    path = tmp_path / "t" / "train.bin"
    meta = write_token_file(path, tok, DOCS, "fp1")
    arr = load_token_file(path, "fp1")
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint16
    assert arr.shape == (meta["length"],)
    assert np.array_equal(arr, encode_documents(tok, DOCS))
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["dtype"] == "uint16" and side["num_documents"] == len(DOCS)
    assert side["vocab_size"] == tok.get_vocab_size() and side["eos_id"] == 0
    assert path.stat().st_size == 2 * side["length"]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="fingerprint"):
        load_token_file(path, "other")
    with pytest.raises(FileNotFoundError):
        load_token_file(tmp_path / "missing.bin")


def test_get_token_file_reuses_and_rebuilds(tmp_path: Path, tok: Tokenizer) -> None:
    path = tmp_path / "val.bin"
    calls: list[int] = []

    def docs() -> list[str]:
        calls.append(1)
        return DOCS

    a = get_token_file(path, tok, docs, "fp")
    mtime = path.stat().st_mtime_ns
    b = get_token_file(path, tok, docs, "fp")
    assert len(calls) == 1 and path.stat().st_mtime_ns == mtime
    assert np.array_equal(a, b)
    c = get_token_file(path, tok, lambda: DOCS[:5], "fp-other")  # stale -> rebuild
    assert len(c) < len(a)
    with path.open("ab") as fh:  # truncated/corrupt data -> rebuild
        fh.write(b"\x00")
    d = get_token_file(path, tok, lambda: DOCS[:5], "fp-other")
    assert np.array_equal(c, d)
