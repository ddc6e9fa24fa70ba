"""Model tests run single-threaded: the tiny tensors gain nothing from threads, and on a shared 2-core
machine OpenMP threads that wait on each other make small ops up to 20x slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
