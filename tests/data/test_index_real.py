"""The index on real data: the LIDC nodule-slice archive and the TotalSegmentator example CT."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medeff.data import build_index, load_index
from medeff.errors import IndexValidationError

pytestmark = pytest.mark.shared_data


def test_lidc_nodule_slices_archive(shared_data, tmp_path, cfg_over):
    src = shared_data / "lidc_nodule_slices_64"
    out = tmp_path / "lidc.json"
    idx = build_index(src, out, cfg_over("class_names=[benign,malignant]"))
    assert len(idx.all_cases) == 529
    assert idx.fingerprint["num_groups"] == 296
    assert idx.fingerprint["class_balance"]["benign"]["cases"] == 380
    assert idx.fingerprint["class_balance"]["malignant"]["cases"] == 149
    assert sum(c.metadata["n_rows"] for c in idx.all_cases) == 3026
    # no exam spans folds: check against the archive's own keys, not only our pseudonyms
    z = np.load(src / "nodule_slices_64x64.npz")
    exam_folds: dict[str, set[int]] = {}
    for c in idx.all_cases:
        exams = {str(z["nodule_key"][r]).split("/")[0] for r in c.archive.rows}
        assert len(exams) == 1
        exam_folds.setdefault(exams.pop(), set()).add(c.fold)
    assert len(exam_folds) == 296 and all(len(f) == 1 for f in exam_folds.values())
    # stratified: every fold holds 28 % +- 5 % malignant nodules
    for f in range(5):
        val = idx.cases(fold=f, split="val")
        assert abs(sum(c.label for c in val) / len(val) - 149 / 529) < 0.05
    text = out.read_text()
    assert all("exam_id" not in c.metadata for c in idx.all_cases)
    assert str(z["nodule_key"][0]).split("/")[0] not in text
    assert all("diameter_mm" in c.metadata for c in idx.all_cases)
    # leakage guard: no identical nodules; the few near-identical pairs are real cross-fold pairs
    leak = idx.leakage
    assert leak["n_identical"] == 0 and leak["n_near_identical"] == len(leak["near_identical"]) < 30
    folds = {c.case_id: c.fold for c in idx.all_cases}
    assert all(folds[a] != folds[b] and r >= 0.98 for a, b, r in leak["near_identical"])
    load_index(out, check_voxels=True)


def test_totalsegmentator_pairs(shared_data, tmp_path, cfg_over):
    d = shared_data / "ct_organs_totalsegmentator"
    # example_seg.nii.gz belongs to example_ct_sm (30 slices), not example_ct (112 slices): the index must refuse
    # that pairing and accept the right ones
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,label,patient_id\n"
        f"{d}/example_ct.nii.gz,{d}/example_seg.nii.gz,a\n"
        f"{d}/example_ct_sm.nii.gz,{d}/example_seg.nii.gz,b\n"
        f"{d}/example_ct.nii.gz,{d}/example_seg_fast_force_split.nii.gz,c\n"
    )
    with pytest.raises(IndexValidationError) as ei:
        build_index(manifest, tmp_path / "bad.json", cfg_over("folds.k=2", "csv.allow_outside_root=true"))
    assert [p.file.split("/")[-1] for p in ei.value.problems] == ["example_seg.nii.gz"]
    assert "112" in ei.value.problems[0].problem and "30" in ei.value.problems[0].problem
    manifest.write_text(
        "image,label,patient_id\n"
        f"{d}/example_ct_sm.nii.gz,{d}/example_seg.nii.gz,a\n"
        f"{d}/example_ct.nii.gz,{d}/example_seg_fast_force_split.nii.gz,b\n"
    )
    out = tmp_path / "ct.json"
    idx = build_index(manifest, out, cfg_over("folds.k=2", "csv.allow_outside_root=true",
                                              f"labels_file={d}/class_maps.json", "labels_file_key=total"))
    assert idx.labels["liver"] == 5 and idx.labels["spleen"] == 1 and idx.labels["background"] == 0
    fps = {c.fingerprint["shape"][2]: c.fingerprint for c in idx.all_cases}
    assert fps[112]["spacing"] == pytest.approx([3.0, 3.0, 3.0]) and fps[112]["orientation"] == "RAS"
    assert fps[112]["label_voxels"]["5"] > 1000  # liver present
    # foreground of an abdominal CT: soft tissue, mean between -200 and 300 HU
    assert -200 < fps[112]["intensity"]["mean"] < 300
    assert idx.fingerprint["spacing"]["median"] == pytest.approx([3.0, 3.0, 3.0])
    assert json.loads(out.read_text())["num_cases"] == 2
    # the naming rule on the shared folder finds only example_ct + example_seg, the mismatched pair
    with pytest.raises(IndexValidationError, match="geometry differs"):
        build_index(d, tmp_path / "s.json", cfg_over("nifti.rule=suffix", "folds.k=2"))


def test_dicom_series_with_reoriented_label_map(shared_data, tmp_path, cfg_over):
    """example_seg_dicom.nii.gz (LAS) covers the DICOM series' voxels (LPS) with the j axis reversed: accepted as a
    reorientation, and the fingerprint is computed on the aligned label (liver ~ 90 HU, not the -75 HU that a
    shape-only pairing would give)."""
    d = shared_data / "ct_organs_totalsegmentator"
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image,label,patient_id\n{d}/example_ct_dicom,{d}/example_seg_dicom.nii.gz,a\n"
                        f"{d}/example_ct_sm.nii.gz,{d}/example_seg.nii.gz,b\n")
    idx = build_index(manifest, tmp_path / "i.json", cfg_over("folds.k=2", "csv.allow_outside_root=true"))
    dcm = next(c for c in idx.all_cases if c.image[0].endswith("example_ct_dicom"))
    fp = dcm.fingerprint
    assert fp["label_reoriented"] is True and fp["shape"] == [512, 512, 20] and fp["orientation"] == "LPS"
    assert fp["spacing"] == pytest.approx([0.9765625, 0.9765625, 2.0])
    assert 40 < fp["intensity"]["mean"] < 150, fp["intensity"]
    assert fp["label_voxels"]["5"] > 100000
    load_index(tmp_path / "i.json")
