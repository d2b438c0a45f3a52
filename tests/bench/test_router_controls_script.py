"""benchmarks/router_controls.py runs end to end (tiny step count) and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_router_controls_script_runs(tmp_path: Path) -> None:
    results = ROOT / "benchmarks" / "results" / "router_controls.json"
    before = results.read_text() if results.exists() else None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "router_controls.py")]
    cmd += ["--steps", "4", "--runs", str(tmp_path / "runs")]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        payload = json.loads(results.read_text())
        assert payload["steps"] == 4 and len(payload["runs"]) == 6
        assert all(
            "load_imbalance_per_layer" in r
            for n, r in payload["runs"].items()
            if n.startswith("deepseek")
        )
        assert "deepseek_v3 bias on" in done.stdout
    finally:  # leave the committed results as they were
        if before is not None:
            results.write_text(before)
