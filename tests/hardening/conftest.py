"""Shared helpers of the hardening suite: fuzz case counters, the slow-marker default and subprocess runs.

Long variants carry ``@pytest.mark.slow``; the suite-wide conftest deselects them unless a ``-m`` expression is given
(``pytest -m slow tests/hardening``). The counts of fuzz cases and kill positions tried are printed in the
terminal summary (the numbers quoted in ``docs/reliability.md`` come from there).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent / "io"))  # dicom_synth.py

COUNTS: collections.Counter = collections.Counter()


def record(kind: str, outcome: str, n: int = 1) -> None:
    """Count ``n`` tried cases (``kind``: suite name, ``outcome``: equal / repaired / error / ...)."""
    COUNTS[(kind, outcome)] += n


def pytest_terminal_summary(terminalreporter):
    if not COUNTS:
        return
    terminalreporter.section("hardening: cases tried")
    for kind in sorted({k for k, _ in COUNTS}):
        parts = ", ".join(f"{o}={n}" for (k, o), n in sorted(COUNTS.items()) if k == kind)
        total = sum(n for (k, _), n in COUNTS.items() if k == kind)
        terminalreporter.write_line(f"{kind}: {total} ({parts})")



# ----------------------------------------------------------------------------------------------- engine fixtures
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory):
    """A tiny 3D organ-segmentation run (one optimiser step) on phantom NIfTI volumes: ``(result, index path)``."""
    import torch

    from engine_helpers import SEG, organ_index, train_in_process

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("engine_seg")
    index = organ_index(root / "data")
    return train_in_process(SEG + [f"data.index={index}", f"run_dir={root / 'run'}"]), index


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    """A process with medeff imported that forks one child per ``medeff`` command (see engine_helpers.Zygote)."""
    from engine_helpers import Zygote

    z = Zygote(tmp_path_factory.mktemp("zygote_logs"))
    yield z
    z.close()
