"""One synthetic one-epoch checkpoint per task, shared by the export and QAT tests of this folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tasks.deploy._cli_tasks import COMMON, TASKS


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """task -> the best checkpoint of a one-epoch `fit` on the tiny synthetic data."""
    root = tmp_path_factory.mktemp("fit")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        out = {}
        for name, (main, tiny, _, _) in TASKS.items():
            cli = main(["fit", *COMMON, *tiny, "--trainer.max_epochs=1", f"--trainer.default_root_dir={root / name}"])
            out[name] = (root / cli.trainer.checkpoint_callback.best_model_path).resolve()
        return out
    finally:
        os.chdir(cwd)
