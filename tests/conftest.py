"""Shared test setup: offline hub, sample-data location, small deterministic threads."""

import os
from pathlib import Path

# Never wait on the Hugging Face Hub's retries: this machine (and CI) is offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real sample datasets (LITEDENSE_TEST_DATA), or skip."""
    root = os.environ.get("LITEDENSE_TEST_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("real sample data not found: set LITEDENSE_TEST_DATA to the shared/data folder")
    return Path(root)
