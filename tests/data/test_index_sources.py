"""Each source kind becomes a valid index: NIfTI (folder and suffix rules), CSV manifest, npz archive, DICOM."""

from __future__ import annotations

import json

import numpy as np
import pytest
from index_fixtures import volume, write_dicom_series, write_nifti, write_npz_archive

from medeff.data import DatasetIndex, build_index, load_index


def test_nifti_folders_rule(nifti_folders, tmp_path, cfg_over):
    out = tmp_path / "out" / "index.json"
    idx = build_index(nifti_folders, out, cfg_over("folds.k=2", "nifti.group_regex='^(?P<group>pat[0-9]+)_'"))
    assert out.is_file() and idx.task == "segmentation" and idx.source_kind == "nifti"
    assert len(idx.all_cases) == 8 and idx.spatial_dims == 3
    assert idx.labels == {"background": 0, "label_1": 1, "label_2": 2}
    # 4 patients (two visits each), never split
    assert len({c.group for c in idx.all_cases}) == 4
    for g in {c.group for c in idx.all_cases}:
        assert len({c.fold for c in idx.all_cases if c.group == g}) == 1
    c = idx.all_cases[0]
    assert c.image[0].startswith("imagesTr/") and str(c.label).startswith("labelsTr/")
    fp = c.fingerprint
    assert fp["shape"] == [12, 10, 8] and fp["spacing"] == pytest.approx([0.8, 0.8, 2.5])
    assert fp["orientation"] == "RAS" and fp["intensity_region"] == "foreground"
    # foreground statistics: the box is +300 over N(0, 100)
    assert 150 < fp["intensity"]["mean"] < 450
    assert sum(fp["label_voxels"].values()) == 5 * 4 * 3
    assert idx.fingerprint["spacing"]["median"] == pytest.approx([0.8, 0.8, 2.5])
    assert idx.fingerprint["labels"]["1"]["cases_present"] + idx.fingerprint["labels"]["2"]["cases_present"] == 8
    # round trip through JSON and load_index (which validates)
    again = load_index(out, check_voxels=True)
    assert again.to_json()["cases"] == idx.to_json()["cases"]
    rec = again.records(fold=0, split="val")[0]
    assert set(rec) >= {"image", "label", "case_id", "group"} and rec["image"].endswith(".nii.gz")
    assert (nifti_folders / "imagesTr").as_posix() in rec["image"]


def test_nifti_channels_and_suffix_rule(tmp_path, rng, cfg_over):
    root = tmp_path / "multi"
    for i in range(3):
        img, lab = volume(rng)
        write_nifti(root / "imagesTr" / f"c{i}_0000.nii.gz", img)
        write_nifti(root / "imagesTr" / f"c{i}_0001.nii.gz", img * 2)
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", lab)
    idx = build_index(root, tmp_path / "m.json", cfg_over("folds.k=3", "channel_names=[CT,PET]"))
    assert idx.channel_names == ["CT", "PET"]
    assert all(len(c.image) == 2 and c.image[0].endswith("_0000.nii.gz") for c in idx.all_cases)
    assert isinstance(idx.records()[0]["image"], list)

    flat = tmp_path / "flat"
    for i in range(4):
        img, lab = volume(rng)
        write_nifti(flat / f"sub{i}" / f"s{i}_ct.nii.gz", img)
        write_nifti(flat / f"sub{i}" / f"s{i}_seg.nii.gz", lab)
    idx = build_index(flat, tmp_path / "s.json", cfg_over("nifti.rule=suffix", "folds.k=2"))
    assert len(idx.all_cases) == 4
    assert all(c.image[0].endswith("_ct.nii.gz") and str(c.label).endswith("_seg.nii.gz") for c in idx.all_cases)


def test_csv_classification_with_metadata(tmp_path, rng, cfg_over):
    root = tmp_path / "csvsrc"
    rows = ["image,label,patient_id,diameter_mm,sex"]
    for i in range(12):
        img, _ = volume(rng)
        write_nifti(root / "img" / f"n{i}.nii.gz", img)
        rows.append(f"img/n{i}.nii.gz,{'malignant' if i % 3 == 0 else 'benign'},P{i // 2},{5 + i},{'MF'[i % 2]}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    idx = build_index(root / "m.csv", tmp_path / "c.json", cfg_over("folds.k=3"))
    assert idx.task == "classification" and idx.class_names == ["benign", "malignant"]
    assert sorted(c.label for c in idx.all_cases).count(1) == 4
    assert {c.metadata["sex"] for c in idx.all_cases} == {"M", "F"}
    assert sorted(c.metadata["diameter_mm"] for c in idx.all_cases) == list(range(5, 17))
    assert idx.fingerprint["class_balance"]["malignant"]["cases"] == 4
    assert idx.stratified
    rec = idx.record(idx.all_cases[0])
    assert rec["label"] in (0, 1) and "meta_diameter_mm" in rec


def test_csv_segmentation_and_explicit_class_names(tmp_path, rng, cfg_over):
    root = tmp_path / "seg"
    rows = ["image,label,patient_id"]
    for i in range(4):
        img, lab = volume(rng, label_value=5)
        write_nifti(root / f"i{i}.nii.gz", img)
        write_nifti(root / f"l{i}.nii.gz", lab)
        rows.append(f"i{i}.nii.gz,l{i}.nii.gz,G{i}")
    (root / "seg.csv").write_text("\n".join(rows) + "\n")
    idx = build_index(root / "seg.csv", tmp_path / "s.json", cfg_over("folds.k=2", "+labels.liver=5"))
    assert idx.task == "segmentation" and idx.labels == {"background": 0, "liver": 5}
    assert idx.label_names == {0: "background", 5: "liver"}


def test_archive_cases_are_grouped_by_exam(tmp_path, rng, cfg_over):
    folder = write_npz_archive(tmp_path / "arc", rng)
    idx = build_index(folder, tmp_path / "a.json", cfg_over("class_names=[benign,malignant]"))
    z = np.load(folder / "slices.npz")
    n_cases = len(set(z["nodule_key"].tolist()))
    assert idx.task == "classification" and idx.source_kind == "archive" and idx.spatial_dims == 2
    assert len(idx.all_cases) == n_cases and idx.fingerprint["num_groups"] == 30
    for c in idx.all_cases:
        rows = list(c.archive.rows)
        assert len({z["nodule_key"][r] for r in rows}) == 1
        assert [int(z["slice_index"][r]) for r in rows] == sorted(int(z["slice_index"][r]) for r in rows)
        assert c.label == int(z["labels"][rows[0]])
        assert "diameter_mm" in c.metadata and "slice" not in c.metadata and "exam_id" not in c.metadata
        assert c.fingerprint["shape"] == [len(rows), 16, 16]
    rec = idx.records()[0]
    assert rec["image"].endswith("slices.npz") and rec["archive_key"] == "images" and rec["rows"]
    load_index(tmp_path / "a.json", check_voxels=True)


def test_archive_csv_misaligned_is_refused(tmp_path, rng, cfg_over):
    from medeff.errors import InputError

    folder = write_npz_archive(tmp_path / "arc", rng)
    lines = (folder / "index.csv").read_text().splitlines()
    lines[1], lines[-1] = lines[-1], lines[1]
    (folder / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="not aligned"):
        build_index(folder, tmp_path / "a.json", cfg_over())
    assert not (tmp_path / "a.json").exists()


def test_dicom_folder_one_case_per_series(tmp_path, cfg_over):
    from medeff.io import find_series  # noqa: F401  (the DICOM source is built on it)

    root = tmp_path / "dicom"
    for p in range(3):
        for s in range(2):
            write_dicom_series(root / f"subject{p}" / f"series{s}", series_uid=f"1.2.3.4.{p}.{s}",
                               study_uid=f"1.2.3.9.{p}", patient_id=f"PID-{p:04d}", patient_name=f"Name^{p}",
                               seed=p * 10 + s)
    idx = build_index(root, tmp_path / "d.json", cfg_over("folds.k=3"))
    assert idx.source_kind == "dicom" and idx.task == "unlabelled" and len(idx.all_cases) == 6
    assert idx.channel_names == ["CT"]
    assert len({c.group for c in idx.all_cases}) == 3
    for c in idx.all_cases:
        assert c.series_uid and c.image[0].startswith("subject")
        assert c.fingerprint["shape"] == [8, 8, 4]
        assert c.fingerprint["spacing"] == pytest.approx([0.7, 0.7, 2.0])
    assert [len(g) for g in idx.groups_by_fold().values()] == [1, 1, 1]
    data = json.loads((tmp_path / "d.json").read_text())
    DatasetIndex.from_json(data)
    load_index(tmp_path / "d.json", check_voxels=True)


def test_csv_dicom_series_with_nifti_label_maps(tmp_path, cfg_over):
    """A manifest row may name a DICOM series folder; its label map must sit on the series' grid."""
    from medeff.io import ImageData

    root = tmp_path / "mixed"
    rows = ["image,label,patient_id"]
    for i in range(3):
        write_dicom_series(root / f"ser{i}", series_uid=f"1.2.5.{i}", study_uid=f"1.2.6.{i}",
                           patient_id=f"PID{i}", seed=i)
        lab = np.zeros((8, 8, 4), dtype=np.uint8)
        lab[2:5, 2:5, 1:3] = 1
        # the series: origin 0, spacing 0.7 x 0.7 x 2.0, axial (LPS identity); i == 2 gets a shifted label map
        geo = ImageData(lab, (0.7, 0.7, 2.0), (0.0, 0.0, 5.0 if i == 2 else 0.0), np.eye(3))
        write_nifti_affine(root / f"lab{i}.nii.gz", lab, geo.affine_ras)
        rows.append(f"ser{i},lab{i}.nii.gz,PID{i}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    from medeff.errors import IndexValidationError

    with pytest.raises(IndexValidationError) as ei:
        build_index(root / "m.csv", tmp_path / "x.json", cfg_over("folds.k=2"))
    assert [(p.file, "geometry differs" in p.problem) for p in ei.value.problems] == [("lab2.nii.gz", True)]
    rows.pop()
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    idx = build_index(root / "m.csv", tmp_path / "x.json", cfg_over("folds.k=2"))
    assert idx.task == "segmentation" and [c.image[0] for c in idx.all_cases] == ["ser0", "ser1"]
    assert all(c.fingerprint["label_voxels"] == {"1": 18} for c in idx.all_cases)
    load_index(tmp_path / "x.json", check_voxels=True)


def write_nifti_affine(path, arr, affine):
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr, affine), str(path))
