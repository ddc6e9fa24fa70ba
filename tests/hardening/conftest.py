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


def record(kind: str, outcome: str) -> None:
    """Count one tried case (``kind``: suite name, ``outcome``: equal / repaired / error / ...)."""
    COUNTS[(kind, outcome)] += 1


def pytest_terminal_summary(terminalreporter):
    if not COUNTS:
        return
    terminalreporter.section("hardening: cases tried")
    for kind in sorted({k for k, _ in COUNTS}):
        parts = ", ".join(f"{o}={n}" for (k, o), n in sorted(COUNTS.items()) if k == kind)
        total = sum(n for (k, _), n in COUNTS.items() if k == kind)
        terminalreporter.write_line(f"{kind}: {total} ({parts})")

