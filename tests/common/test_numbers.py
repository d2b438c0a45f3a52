"""format_number: one rule for a zero's sign and for missing values in every table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dynroute.common.numbers import MISSING, format_number

SPECS = [".4f", "+.4f", ".3f", "+.3f", ".2f", ".1%", ".0%", ".3g", ",.0f", ".2e", ">8.4f"]


@pytest.mark.parametrize(
    ("value", "spec", "text"),
    [
        (-0.0, ".4f", "0.0000"),
        (-0.00001, ".4f", "0.0000"),
        (-0.00001, "+.4f", "+0.0000"),
        (-0.0004, ".1%", "0.0%"),
        (-0.4, ",.0f", "0"),
        (-0.00004, ">8.4f", "  0.0000"),
        (-0.0001, ".4f", "-0.0001"),  # a real negative keeps its sign
        (-1e-9, ".2e", "-1.00e-09"),
        (-math.inf, ".2f", "-inf"),
        (None, ".4f", MISSING),
        (math.nan, ".4f", MISSING),
        (np.float32(-1e-6), ".3f", "0.000"),
        (torch.tensor(-1e-6), ".3f", "0.000"),
        (-0, "d", "0"),
    ],
)
def test_examples(value: object, spec: str, text: str) -> None:
    assert format_number(value, spec) == text  # type: ignore[arg-type]


@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(SPECS))
def test_never_a_minus_on_a_zero_and_otherwise_python_format(x: float, spec: str) -> None:
    got, plain = format_number(x, spec), format(x, spec)
    mantissa = plain.split("e")[0]
    if "-" in plain and not any(c in "123456789" for c in mantissa):
        assert "-" not in got and got == format(0.0, spec)
    else:
        assert got == plain
