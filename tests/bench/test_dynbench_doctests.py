"""The examples in benchmarks/dynbench and benchmarks/layer.py run (`--doctest-modules src
tests` does not see them)."""

import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest

MODULES = ["cells", "gpu_shapes", "hf_experts", "memory", "report", "suite", "timing"]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    result = doctest.testmod(importlib.import_module(f"dynbench.{name}"))
    assert result.attempted > 0 and result.failed == 0, (
        f"dynbench.{name}: {result.failed} of {result.attempted} failed"
    )


def test_layer_script_examples():
    path = Path(__file__).parents[2] / "benchmarks" / "layer.py"
    spec = importlib.util.spec_from_file_location("layer_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0, f"{path}: {result.failed} failed"
