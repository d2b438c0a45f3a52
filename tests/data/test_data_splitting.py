"""Deterministic splitting and byte caps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynroute.data.splitting import (
    cap_bytes,
    cap_bytes_spread,
    check_split,
    hash_score,
    split_names,
    split_text,
)


def test_hash_score_is_pinned() -> None:
    # sha256-based, so identical on every machine and run; pinned to catch changes.
    assert hash_score("json/decoder.py") == pytest.approx(0.23117427244379962, abs=1e-15)


def test_check_split_rejects_unknown() -> None:
    assert check_split("validation") == "validation"
    with pytest.raises(ValueError, match="unknown split"):
        check_split("test")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=60, unique=True))
def test_split_names_partition(names: list[str]) -> None:
    out = split_names(names)
    train, val = out["train"], out["validation"]
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(names)
    assert train and val
    assert split_names(list(reversed(names)))["validation"] == list(reversed(val))


def test_split_names_fraction_roughly_five_percent() -> None:
    names = [f"pkg/mod_{i}.py" for i in range(4000)]
    n_val = len(split_names(names)["validation"])
    assert 120 < n_val < 280


def test_split_text_cuts_at_line_boundary() -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    parts = split_text(text)
    assert parts["train"] + parts["validation"] == text
    assert parts["train"].endswith("\n")
    assert 0 < len(parts["validation"]) < 0.1 * len(text)
    assert split_text("ab") == {"train": "a", "validation": "b"}
    assert split_text("x")["validation"] == ""


def test_cap_bytes_truncates_last_document() -> None:
    assert cap_bytes(["abcd", "", "efgh"], 6) == ["abcd", "ef"]
    assert cap_bytes(["ab"], None) == ["ab"]
    assert cap_bytes(["é" * 4], 3) == ["é"]  # never splits a UTF-8 character
    with pytest.raises(ValueError):
        cap_bytes(["a"], 0)


def test_cap_bytes_spread_keeps_order_and_budget() -> None:
    docs = [f"doc{i:03d}-" * 10 for i in range(200)]
    out = cap_bytes_spread(docs, 5_000)
    assert sum(len(d.encode()) for d in out) <= 5_000
    assert out == sorted(out)  # original (sorted) order preserved
    assert out == cap_bytes_spread(docs, 5_000)
    picked = [docs.index(d) for d in out if d in docs]
    assert max(picked) - min(picked) > 100  # spread over the corpus, not a prefix
