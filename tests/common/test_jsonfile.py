"""Strict JSON results: NaN and infinities are written as null, never as bare NaN."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynroute.common.jsonfile import finite_or_none, json_text, write_json
from strict_json import load_strict

ROOT = Path(__file__).resolve().parents[2]

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)


@given(values)
def test_any_value_becomes_strict_json(value: object) -> None:
    text = json_text(value)
    back = json.loads(text, parse_constant=_refuse)  # a strict parser reads it
    assert back == json.loads(json.dumps(finite_or_none(value)))


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} written")


def test_non_ascii_text_is_kept_when_asked() -> None:
    assert json_text(["k̄ ⇄"], None) == '["k\\u0304 \\u21c4"]'
    assert json_text(["k̄ ⇄"], None, ensure_ascii=False) == '["k̄ ⇄"]'


def test_non_finite_floats_are_null_and_the_rest_is_kept(tmp_path: Path) -> None:
    payload = {"margin": math.nan, "se": [math.inf, -math.inf, 0.5], "run": Path("runs/a")}
    write_json(tmp_path / "results.json", payload)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("}\n")
    assert load_strict(tmp_path / "results.json") == {
        "margin": None,
        "se": [None, None, 0.5],
        "run": "runs/a",
    }


def test_what_json_cannot_hold_is_refused_not_stringified() -> None:
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        json_text({"x": object()})


# Every results file of these packages and of benchmarks/ goes through write_json: a
# json.dumps straight into a file could write NaN again.
RESULTS_WRITERS = [
    "benchmarks",
    "src/dynroute/frontier",
    "src/dynroute/analysis",
    "src/dynroute/adaptive",
    "src/dynroute/lora",
    "src/dynroute/commands",
]
# measures the source tree without importing dynroute; writes counts and names, no floats
STANDALONE = {"benchmarks/architecture.py"}
DUMPED_INTO_A_FILE = re.compile(
    r"(write_text|atomic_write_text|\.write)\([^()]*json\.dumps\(", re.S
)


@pytest.mark.parametrize("folder", RESULTS_WRITERS)
def test_results_writers_use_write_json(folder: str) -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / folder).rglob("*.py"))
        if DUMPED_INTO_A_FILE.search(path.read_text(encoding="utf-8"))
        and str(path.relative_to(ROOT)) not in STANDALONE
    ]
    assert not offenders, f"write results with dynroute.common.jsonfile.write_json: {offenders}"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "benchmarks" / "results").glob("*.json")), ids=lambda p: p.name
)
def test_committed_results_are_strict_json(path: Path) -> None:
    load_strict(path)  # raises on NaN / Infinity
