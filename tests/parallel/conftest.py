"""One launch of 2 gloo processes shared by every test module of this folder (a process
start costs seconds): ``ep_workers.all_checks`` runs each module's checks in turn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so spawned ranks can import the workers
import ep_workers

from dynroute.parallel.spawn import run_ranks


@pytest.fixture(scope="session")
def two_rank_checks() -> list[dict]:
    """Per rank: ``ep_workers.all_checks``' results (equivalence, pipeline, training, ...)."""
    return run_ranks(ep_workers.all_checks, 2, timeout_s=240, collective_timeout_s=60, threads=1)
