"""One intra-op thread for these tests: on a shared 2-core machine, two OpenMP threads per process
spin against each other and the other processes (measured ~8x slower per training step under load)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
