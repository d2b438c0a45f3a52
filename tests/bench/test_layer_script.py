"""The layer suite runs as `python benchmarks/layer.py` (what `make bench` runs) and as
`dynroute bench layer` from any folder (it ships with the package, not the checkout)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dynroute

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "layer.py"
SMALL = ["--tokens", "8", "--d-model", "32", "--d-ff", "64", "--num-experts", "4"]
SMALL += ["--repeats", "1"]


def _env() -> dict[str, str]:
    # PYTHONPATH points at the dynroute under test (a checkout's src/)
    return {**os.environ, "PYTHONPATH": str(Path(dynroute.__file__).parents[1])}


def test_layer_script_small_shape(tmp_path):
    args = [*SMALL, "--out", str(tmp_path / "layer.json"), "--chart", str(tmp_path / "layer.png")]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=_env(),
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "grouped" in result.stdout and "bound" in result.stdout
    assert (tmp_path / "layer.json").stat().st_size > 0


def test_bench_layer_runs_outside_a_checkout(tmp_path):
    # cwd has no benchmarks/ folder: the suite is the package's, results go to --results
    cmd = [sys.executable, "-m", "dynroute.cli", "bench", "layer", *SMALL, "--modes", "fwd"]
    cmd += ["--routers", "top2", "--no-memory", "--results", "res"]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "✅" in result.stdout  # the legend
    records = json.loads((tmp_path / "res" / "layer.json").read_text())
    assert {r["impl"] for r in records} >= {"grouped", "bound", "floor"}
    assert (tmp_path / "res" / "layer.png").is_file()


def test_bench_layer_bad_flag_is_a_usage_error(tmp_path):
    cmd = [sys.executable, "-m", "dynroute.cli", "bench", "layer", "--suite", "gpu"]
    cmd += ["--shapes", "nope", "--dry-run"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--shapes ['nope']" in result.stderr
