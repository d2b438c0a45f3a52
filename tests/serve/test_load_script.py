"""benchmarks/serve_load.py end to end with small counts (slow: starts three processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving_procs import cli_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


@pytest.mark.slow
def test_serve_load_script_runs_and_loses_nothing(tmp_path):
    out = tmp_path / "serve_load.json"
    args = ["--requests", "24", "--clients", "4", "--fault-requests", "18", "--pairs", "6"]
    args += ["--burst-requests", "30", "--rate", "20", "--budget-requests", "40"]
    args += ["--budget-usd", "0.01", "--drain-streams", "24"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["load"]["answered"] == 24 and result["load"]["lost"] == 0
    fault = result["fault"]
    assert fault["lost"] == 0 and fault["answered"] + fault["refused"] == 18
    assert fault["killed"]["backend"] in result["config"]["backends"]
    assert result["overhead"]["p50_inside_proxy_ms"] > 0
    assert result["load_with_keys"]["answered"] == 24 and result["load_with_keys"]["lost"] == 0
    assert result["overhead"]["p50_inside_keyed_proxy_ms"] > 0
    for arrivals in result["bursty"].values():
        assert arrivals["answered"] == 30 and arrivals["lost"] == 0
    budget = result["budget"]
    assert budget["lost"] == 0 and budget["answered"] > 0 and budget["refused"] > 0
    assert budget["over_limit_usd"] <= budget["largest_request_usd"]
    assert budget["after_restart"] == ["refused"] * 4  # the spend survived a SIGKILL
    drain = result["drain"]
    assert drain["answered"] == 24 and drain["lost"] == 0 and drain["exit_code"] == 0
    assert drain["request_during_drain"] == "refused"
