"""benchmarks/gpu_check.sh: the prepared GPU run parses and plans its steps on a CPU box."""

import os
import subprocess
import sys
from pathlib import Path

import dynroute

ROOT = Path(__file__).parents[2]


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(dynroute.__file__).parents[1]),
           "PYTHON": sys.executable}  # fmt: skip
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip


def test_gpu_check_dry_run_lists_every_step(tmp_path: Path) -> None:
    result = _run(str(tmp_path / "out"), "--dry-run", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "would count CUDA syncs" in out and "top_k:k=2" in out
    for cell in (
        "mixtral: top2 E=8 N=16384",
        "olmoe: top8 E=64 N=4096",
        "qwen3_30b_a3b: top8 E=128",
    ):
        assert cell in out
    assert "d_model=4096 d_ff=14336 bfloat16 cuda" in out
    assert "dynroute train" in out  # says whether the train flags it needs are there


def test_gpu_check_rejects_unknown_options(tmp_path: Path) -> None:
    result = _run("--bogus", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "unknown option --bogus" in result.stderr and "Traceback" not in result.stderr
