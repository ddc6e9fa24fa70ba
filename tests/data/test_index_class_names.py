"""CSV class values: spaces around them are removed and upper/lower case is ignored (both logged)."""

from __future__ import annotations

import logging

import pytest
from index_fixtures import volume, write_nifti

from medeff.data import build_index
from medeff.errors import ConfigError


def _manifest(tmp_path, rng, classes: list[str]):
    root = tmp_path / "csv"
    rows = ["image,label,patient_id"]
    for i, c in enumerate(classes):
        img, _ = volume(rng, shape=(6, 5, 4))
        write_nifti(root / f"c{i}.nii.gz", img)
        rows.append(f"c{i}.nii.gz,{c},P{i}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_spaces_around_class_values_are_removed(tmp_path, rng, cfg_over, caplog):
    csv = _manifest(tmp_path, rng, ["Benign ", "Malignant", " Benign", "Malignant", "Benign", "Malignant"])
    with caplog.at_level(logging.INFO, logger="medeff"):
        idx = build_index(csv, tmp_path / "i.json", cfg_over("folds.k=2"))
    assert idx.class_names == ["Benign", "Malignant"]
    assert sorted(c.label for c in idx.all_cases) == [0, 0, 0, 1, 1, 1]
    assert "removed spaces around 2 class value(s)" in caplog.text and "'Benign ' -> 'Benign'" in caplog.text


def test_class_values_differing_in_case_are_one_class(tmp_path, rng, cfg_over, caplog):
    csv = _manifest(tmp_path, rng, ["benign", "Benign", "benign", "BENIGN", "malignant", "Malignant"])
    with caplog.at_level(logging.INFO, logger="medeff"):
        idx = build_index(csv, tmp_path / "i.json", cfg_over("folds.k=2"))
    # the most frequent spelling names the class; ties go to the first in sorted order ('Malignant' < 'malignant')
    assert idx.class_names == ["Malignant", "benign"]
    assert sorted(c.label for c in idx.all_cases) == [0, 0, 1, 1, 1, 1]
    assert "differ only in upper/lower case are one class" in caplog.text
    assert "'BENIGN' (1 row(s)) -> 'benign'" in caplog.text and "'Benign' (1 row(s)) -> 'benign'" in caplog.text


def test_declared_class_names_match_ignoring_case_and_spaces(tmp_path, rng, cfg_over):
    csv = _manifest(tmp_path, rng, ["Benign", "MALIGNANT ", "benign", "malignant"])
    idx = build_index(csv, tmp_path / "i.json", cfg_over("folds.k=2", "class_names=[' benign',malignant]"))
    assert idx.class_names == ["benign", "malignant"]
    assert sorted(c.label for c in idx.all_cases) == [0, 0, 1, 1]


def test_declared_class_names_differing_only_in_case_are_refused(tmp_path, rng, cfg_over):
    csv = _manifest(tmp_path, rng, ["benign", "Benign"])
    with pytest.raises(ConfigError, match=r"class_names \['Benign', 'benign'\] differ only in upper/lower case"):
        build_index(csv, tmp_path / "i.json", cfg_over("folds.k=2", "class_names=[benign,Benign]"))
