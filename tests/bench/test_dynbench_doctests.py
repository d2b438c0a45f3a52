"""The examples in benchmarks/dynbench run (`--doctest-modules src tests` does not see them)."""

import doctest
import importlib

import pytest

MODULES = ["hf_experts", "layer", "memory", "report", "suite", "timing"]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    result = doctest.testmod(importlib.import_module(f"dynbench.{name}"))
    assert result.attempted > 0 and result.failed == 0, (
        f"dynbench.{name}: {result.failed} of {result.attempted} failed"
    )
