"""Shared test setup: offline hub, sample-data location, one CPU thread."""

import os
from pathlib import Path

# Never wait on the Hugging Face Hub's retries: this machine (and CI) is offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: on a shared or small machine, OpenMP threads spin against each other and other
# processes (a training step measured up to 8x slower with two); the suite's tensors are small anyway.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real sample datasets (LITEDENSE_TEST_DATA), or skip."""
    root = os.environ.get("LITEDENSE_TEST_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("real sample data not found: set LITEDENSE_TEST_DATA to the shared/data folder")
    return Path(root)
