"""`python benchmarks/layer.py` (what `make bench` runs) works from a source checkout.

The suite (`benchmarks/dynbench`) is not in the wheel; there is no `dynroute bench layer`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dynroute

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "layer.py"
SMALL = ["--tokens", "8", "--d-model", "32", "--d-ff", "64", "--num-experts", "4"]
SMALL += ["--repeats", "1"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # the script's own folder (benchmarks/, where dynbench lives) is on its path, not
    # pytest's; PYTHONPATH points at the dynroute under test (a checkout's src/)
    env = {**os.environ, "PYTHONPATH": str(Path(dynroute.__file__).parents[1])}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
        cwd=cwd, timeout=300,
    )  # fmt: skip


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_layer_script_small_shape(tmp_path):
    result = _run(
        *SMALL, "--out", str(tmp_path / "layer.json"), "--chart", str(tmp_path / "layer.png")
    )
    assert result.returncode == 0, result.stderr
    assert "grouped" in result.stdout and "bound" in result.stdout
    assert "✅ / ❌ in the layer tables" in result.stdout  # the legend after the tables
    assert (tmp_path / "layer.json").stat().st_size > 0


def test_layer_script_results_folder_from_any_cwd(tmp_path):
    # --results is the folder of the default --out and --chart
    result = _run(
        *SMALL, "--modes", "fwd", "--routers", "top2", "--no-memory", "--results", "res",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "res" / "layer.json").read_text())
    assert {r["impl"] for r in records} >= {"grouped", "bound", "floor"}
    assert (tmp_path / "res" / "layer.png").is_file()


def test_layer_script_help_explains_the_marks():
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "✅" in text and "❌" in text and "1.10" in text and "dense SwiGLU GEMM" in text
    assert "--num-experts" in text and "--suite" in text


def test_layer_script_bad_flag_is_a_usage_error(tmp_path):
    result = _run("--suite", "gpu", "--shapes", "nope", "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--shapes ['nope']" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written
