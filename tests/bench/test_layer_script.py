"""`python benchmarks/layer.py` (the suite `make bench` runs) works from a source checkout."""

import os
import subprocess
import sys
from pathlib import Path

import dynroute

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "layer.py"


def test_layer_script_small_shape(tmp_path):
    # its own folder (benchmarks/, where dynbench lives) is on the script's path, not
    # pytest's; PYTHONPATH points at the dynroute under test (a checkout's src/)
    env = {**os.environ, "PYTHONPATH": str(Path(dynroute.__file__).parents[1])}
    args = ["--tokens", "8", "--d-model", "32", "--d-ff", "64", "--experts", "4"]
    args += ["--repeats", "1", "--out", str(tmp_path / "layer.json")]
    args += ["--chart", str(tmp_path / "layer.png")]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "grouped" in result.stdout and "bound" in result.stdout
    assert (tmp_path / "layer.json").stat().st_size > 0
