"""Shared fixtures. Tests that need ../shared/data use the ``shared_data`` fixture, which skips with a reason
when the folder is absent (CI has it, so those tests run there)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDEFF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_configure(config):
    # keep CPU tests predictable on the 2-core machines
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """Deselect ``@pytest.mark.slow`` tests, and ``@pytest.mark.gpu`` tests on a machine without CUDA, unless a
    ``-m`` expression is given (``pytest -m slow`` / ``pytest -m gpu`` runs them)."""
    if config.getoption("-m"):
        return
    import torch

    left_out = {"slow"} if torch.cuda.is_available() else {"slow", "gpu"}
    keep = [item for item in items if not left_out & set(item.keywords)]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if left_out & set(item.keywords)])
        items[:] = keep


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test with a clear reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT data not found at {SHARED_DATA} (set MEDEFF_SHARED_DATA to its location)")
    return SHARED_DATA


@pytest.fixture()
def rng():
    import numpy as np

    return np.random.default_rng(0)
