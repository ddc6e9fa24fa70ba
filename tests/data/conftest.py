"""Fixtures of the dataset-index tests; the builders live in ``index_fixtures.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from index_fixtures import volume, write_nifti


@pytest.fixture()
def nifti_folders(tmp_path, rng) -> Path:
    """imagesTr/labelsTr with 8 cases of 4 patients (names ``patN_visitM``), two labels (1, 2)."""
    root = tmp_path / "ds"
    for p in range(4):
        for v in range(2):
            img, lab = volume(rng, label_value=1 + (p + v) % 2)
            write_nifti(root / "imagesTr" / f"pat{p}_visit{v}.nii.gz", img, spacing=(0.8, 0.8, 2.5))
            write_nifti(root / "labelsTr" / f"pat{p}_visit{v}.nii.gz", lab, spacing=(0.8, 0.8, 2.5))
    return root


@pytest.fixture()
def cfg_over():
    """Compose conf/index.yaml with a fixed salt plus overrides."""
    from medeff.data import index_config

    def make(*overrides: str):
        return index_config(["pseudonym.salt=test-salt", *overrides])

    return make
