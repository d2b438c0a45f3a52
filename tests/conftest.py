import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

# CI has 2 cores; more threads only add contention between processes.
torch.set_num_threads(min(2, os.cpu_count() or 1))

settings.register_profile(
    "dynroute", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dynroute"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def keep_threads() -> Iterator[None]:
    """Restores torch's thread count after a test (a run sets its own: ``[train] threads``)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread(keep_threads: None) -> None:
    """Tiny models: a second thread only adds barrier waits per op (seconds on a busy box)."""
    torch.set_num_threads(1)
