"""Labels that are not declared classes are errors naming the file, the value and the fix (never class 0)."""

from __future__ import annotations

import numpy as np
import pytest
from index_fixtures import volume, write_nifti, write_npz_archive

from medeff.data import build_index
from medeff.errors import IndexValidationError


def _problems(info) -> list[tuple[str, str]]:
    return [(p.file, f"{p.problem} Fix: {p.fix}") for p in info.value.problems]


def _archive(tmp_path, rng, labels):
    folder = write_npz_archive(tmp_path / "arc", rng, n_groups=8, with_csv=False)
    z = dict(np.load(folder / "slices.npz"))
    z["labels"] = labels(z)
    np.savez(folder / "slices.npz", **z)
    return folder, z


def test_archive_of_minus_one_labels_is_refused_not_read_as_class_0(tmp_path, rng, cfg_over):
    folder, z = _archive(tmp_path, rng, lambda z: np.full(len(z["images"]), -1, np.int64))
    for over in ((), ("class_names=[benign,malignant]",)):
        with pytest.raises(IndexValidationError) as info:
            build_index(folder, tmp_path / "a.json", cfg_over("folds.k=2", *over))
        [(file, text)] = _problems(info)
        assert file == "slices.npz" and "label value(s) [-1]" in text
        assert f"in {len(z['images'])} of {len(z['images'])} row(s)" in text and "archive.labels_key=null" in text
    # the documented way to index an unlabelled archive
    idx = build_index(folder, tmp_path / "u.json", cfg_over("folds.k=2", "archive.labels_key=null"))
    assert idx.task == "unlabelled" and all(c.label is None for c in idx.all_cases)
    assert all("label" not in r for r in idx.records())


def test_archive_with_some_unknown_rows_names_them(tmp_path, rng, cfg_over):
    def labels(z):
        lab = z["labels"].astype(np.int16)
        keys = z["nodule_key"]
        lab[keys == keys[0]] = -1
        return lab

    folder, z = _archive(tmp_path, rng, labels)
    n_bad = int(np.count_nonzero(z["nodule_key"] == z["nodule_key"][0]))
    with pytest.raises(IndexValidationError) as info:
        build_index(folder, tmp_path / "a.json", cfg_over("folds.k=2"))
    [(file, text)] = _problems(info)
    assert f"[-1] in {n_bad} of" in text and f"rows {list(range(n_bad))}" in text


@pytest.mark.parametrize("case", ["uint8_255", "beyond_classes", "nan"])
def test_archive_labels_outside_the_classes(tmp_path, rng, cfg_over, case):
    if case == "uint8_255":  # -1 stored unsigned; it would have made 256 classes
        make, over, shown = (lambda z: np.where(np.arange(len(z["labels"])) < 3, 255, z["labels"]).astype(np.uint8),
                             (), "[255]")
    elif case == "beyond_classes":
        make, over, shown = (lambda z: np.where(np.arange(len(z["labels"])) < 3, 2, z["labels"]),
                             ("class_names=[benign,malignant]",), "[2]")
    else:  # used to stop with a ValueError traceback (int(nan))
        make, over, shown = (lambda z: np.where(np.arange(len(z["labels"])) < 3, np.nan, z["labels"]), (), "[nan]")
    folder, _ = _archive(tmp_path, rng, make)
    with pytest.raises(IndexValidationError) as info:
        build_index(folder, tmp_path / "a.json", cfg_over("folds.k=2", *over))
    [(file, text)] = _problems(info)
    assert file == "slices.npz" and f"label value(s) {shown} in 3 of" in text


@pytest.mark.parametrize("classes", [("0", "1"), ("benign", "malignant")])
def test_csv_minus_one_is_not_a_class(tmp_path, rng, cfg_over, classes):
    root = tmp_path / "csv"
    rows = ["image,label,patient_id"]
    for i in range(6):
        img, _ = volume(rng)
        write_nifti(root / f"c{i}.nii.gz", img)
        rows.append(f"c{i}.nii.gz,{'-1' if i == 4 else classes[i % 2]},P{i}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(IndexValidationError) as info:
        build_index(root / "m.csv", tmp_path / "c.json", cfg_over("folds.k=2"))
    [(file, text)] = _problems(info)
    assert file == "c4.nii.gz" and "has class '-1' in column 'label'" in text
    assert f"classes {list(classes)}" in text and "csv.label_col=null" in text


def _seg_folder(tmp_path, rng, bad_value: int):
    root = tmp_path / "seg"
    for i in range(4):
        img, lab = volume(rng)
        if i == 2:
            lab = lab.astype(np.int16)
            lab[0, 0, 0] = bad_value
        write_nifti(root / "imagesTr" / f"s{i}.nii.gz", img)
        write_nifti(root / "labelsTr" / f"s{i}.nii.gz", lab)
    return root


def test_label_map_values_outside_the_declared_labels_name_the_file(tmp_path, rng, cfg_over):
    root = _seg_folder(tmp_path, rng, bad_value=7)
    with pytest.raises(IndexValidationError) as info:
        build_index(root, tmp_path / "s.json", cfg_over("folds.k=2", "+labels.liver=1"))
    [(file, text)] = _problems(info)
    assert file == "labelsTr/s2.nii.gz" and "label values [7]" in text and "background=0, liver=1" in text


def test_negative_label_map_values_are_refused(tmp_path, rng, cfg_over):
    root = _seg_folder(tmp_path, rng, bad_value=-1)
    for over in ((), ("label_remap={1: 1}",)):  # with a remap it used to stop with a ValueError traceback
        with pytest.raises(IndexValidationError) as info:
            build_index(root, tmp_path / "s.json", cfg_over("folds.k=2", *over))
        [(file, text)] = _problems(info)
        assert file == "labelsTr/s2.nii.gz" and "negative value(s) [-1] (1 voxel(s))" in text
