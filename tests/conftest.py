import os

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
