"""Validation: every problem of every case is reported at once; load_index re-validates; the leakage guard."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from index_fixtures import volume, write_nifti, write_npz_archive

from medeff.data import build_index, load_index
from medeff.errors import IndexValidationError, InputError


def test_build_reports_every_bad_case_at_once(nifti_folders, tmp_path, rng, cfg_over):
    img_dir, lab_dir = nifti_folders / "imagesTr", nifti_folders / "labelsTr"
    # 1) label geometry mismatch (shape), 2) NaN voxels, 3) empty label map, 4) 2D image in a 3D set,
    # 5) image without label map, 6) label map without image, 7) label map with spacing mismatch
    img, lab = volume(rng)
    write_nifti(lab_dir / "pat0_visit0.nii.gz", lab[:, :, :5])
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    bad[1, 1, 1] = np.inf
    write_nifti(img_dir / "pat0_visit1.nii.gz", bad, spacing=(0.8, 0.8, 2.5))
    write_nifti(lab_dir / "pat1_visit0.nii.gz", np.zeros_like(lab), spacing=(0.8, 0.8, 2.5))
    import nibabel as nib

    nib.save(nib.Nifti1Image(img[:, :, 0], np.eye(4)), str(img_dir / "pat1_visit1.nii.gz"))
    (lab_dir / "pat1_visit1.nii.gz").unlink()
    write_nifti(lab_dir / "orphan.nii.gz", lab)
    write_nifti(lab_dir / "pat2_visit0.nii.gz", lab, spacing=(1.0, 0.8, 2.5))
    out = tmp_path / "bad.json"
    with pytest.raises(IndexValidationError) as ei:
        build_index(nifti_folders, out, cfg_over("folds.k=2"))
    err = ei.value
    text = str(err)
    problems = {(p.file, p.problem.split(" (")[0]) for p in err.problems}
    assert ("labelsTr/pat0_visit0.nii.gz", "label map geometry differs from the image") in problems
    assert any(f == "imagesTr/pat0_visit1.nii.gz" and "1 NaN and 1 infinite" in p for f, p in problems)
    assert ("labelsTr/pat1_visit0.nii.gz", "label map is empty") in problems
    assert any(f == "imagesTr/pat1_visit1.nii.gz" and "image is 2D" in p for f, p in problems)
    assert any(f == "imagesTr/pat1_visit1.nii.gz" and "no label map" in p for f, p in problems)
    assert any(f == "labelsTr/orphan.nii.gz" and "has no image" in p for f, p in problems)
    assert ("labelsTr/pat2_visit0.nii.gz", "label map geometry differs from the image") in problems
    assert len(err.problems) >= 7 and "Fix:" in text and text.count("\n- ") == len(err.problems)
    assert all(p.fix for p in err.problems)
    assert not out.exists()  # nothing written


def test_load_index_reports_every_problem(nifti_folders, tmp_path, rng, cfg_over):
    out = tmp_path / "index.json"
    build_index(nifti_folders, out, cfg_over("folds.k=2", "nifti.group_regex='^(?P<group>pat[0-9]+)_'"))
    data = json.loads(out.read_text())
    cases = data["cases"]
    # missing image, missing label, label replaced by another grid, voxels broken after indexing,
    # a patient moved to another fold, a duplicated case id
    (nifti_folders / cases[0]["image"][0]).unlink()
    (nifti_folders / cases[1]["label"]).unlink()
    img, lab = volume(rng, shape=(12, 10, 9))
    write_nifti(nifti_folders / cases[2]["label"], lab)
    bad = img[:, :, :8].copy()
    bad[2, 2, 2] = np.nan
    write_nifti(nifti_folders / cases[3]["image"][0], bad, spacing=(0.8, 0.8, 2.5))
    cases[4]["fold"] = (cases[4]["fold"] + 1) % 2
    out.write_text(json.dumps(data))
    with pytest.raises(IndexValidationError) as ei:
        load_index(out)  # headers only: no NaN check yet
    ids = {(p.case_id, p.problem.split(" (")[0]) for p in ei.value.problems}
    assert (cases[0]["case_id"], "image file is missing") in ids
    assert (cases[1]["case_id"], "label map file is missing") in ids
    assert (cases[2]["case_id"], "label map geometry differs from the image") in ids
    assert any(cid == cases[4]["case_id"] and "split across folds" in p for cid, p in ids)
    assert not any("NaN" in p for _, p in ids)
    with pytest.raises(IndexValidationError) as ei:
        load_index(out, check_voxels=True)
    assert any(p.case_id == cases[3]["case_id"] and "NaN" in p.problem for p in ei.value.problems)
    # the cheap path reads no voxels: fast even with all checks listed
    data["cases"][5]["case_id"] = data["cases"][6]["case_id"]
    out.write_text(json.dumps(data))
    with pytest.raises(IndexValidationError, match="appears more than once"):
        load_index(out, check_files=False)


def test_load_index_rejects_non_index_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{\"format\": \"other\"}")
    with pytest.raises(IndexValidationError, match="not a medeff dataset index"):
        load_index(p)
    p.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_index(p)
    with pytest.raises(InputError, match="does not exist"):
        load_index(tmp_path / "missing.json")


def test_moved_data_loads_with_root(nifti_folders, tmp_path, cfg_over):
    out = tmp_path / "index.json"
    build_index(nifti_folders, out, cfg_over("folds.k=2"))
    moved = tmp_path / "moved"
    shutil.move(str(nifti_folders), str(moved))
    with pytest.raises(IndexValidationError, match="missing"):
        load_index(out)
    assert len(load_index(out, root=moved).all_cases) == 8


def test_leakage_guard_reports_duplicates_across_folds(tmp_path, rng, cfg_over):
    root = tmp_path / "dup"
    base, lab = volume(rng, shape=(20, 20, 12))
    for i in range(6):
        img, lab_i = volume(rng, shape=(20, 20, 12))
        if i == 1:
            img = base.copy()  # identical to case 0's image, another patient
        if i == 0:
            img = base
        if i == 2:
            img = base + rng.normal(0, 5, size=base.shape).astype(np.float32)  # near-identical
        write_nifti(root / "imagesTr" / f"p{i}.nii.gz", img)
        write_nifti(root / "labelsTr" / f"p{i}.nii.gz", lab_i)
    idx = build_index(root, tmp_path / "i.json", cfg_over("folds.k=6"))  # one patient per fold
    leak = idx.leakage
    assert leak["n_identical"] == 1 and leak["n_near_identical"] == 2  # 0~2 and 1~2
    ids = {c.image[0]: c.case_id for c in idx.all_cases}
    assert sorted(leak["identical"][0]) == sorted([ids["imagesTr/p0.nii.gz"], ids["imagesTr/p1.nii.gz"]])
    pairs = {tuple(sorted(p[:2])) for p in leak["near_identical"]}
    assert tuple(sorted([ids["imagesTr/p0.nii.gz"], ids["imagesTr/p2.nii.gz"]])) in pairs
    assert all(0.98 <= p[2] <= 1.0 for p in leak["near_identical"])
    # same patient: duplicates share a fold and are not leaks
    (root / "imagesTr" / "p1.nii.gz").rename(root / "imagesTr" / "q0_b.nii.gz")
    (root / "labelsTr" / "p1.nii.gz").rename(root / "labelsTr" / "q0_b.nii.gz")
    (root / "imagesTr" / "p0.nii.gz").rename(root / "imagesTr" / "q0_a.nii.gz")
    (root / "labelsTr" / "p0.nii.gz").rename(root / "labelsTr" / "q0_a.nii.gz")
    idx = build_index(root, tmp_path / "j.json", cfg_over("folds.k=5", "nifti.group_regex='^(?P<group>q0)_'"))
    assert idx.leakage["n_identical"] == 0


def test_archive_case_with_mixed_labels_is_reported(tmp_path, rng, cfg_over):
    folder = write_npz_archive(tmp_path / "arc", rng, with_csv=False)
    z = dict(np.load(folder / "slices.npz"))
    first = z["nodule_key"][0]
    rows = np.flatnonzero(z["nodule_key"] == first)
    z["labels"][rows[-1]] = 1 - z["labels"][rows[0]]
    np.savez(folder / "slices.npz", **z)
    with pytest.raises(IndexValidationError, match="different labels"):
        build_index(folder, tmp_path / "a.json", cfg_over())


def test_reoriented_label_map_is_accepted_and_aligned(tmp_path, rng, cfg_over):
    """A label map on the same voxels but with flipped/permuted axes is aligned; a shifted one is refused."""
    img, lab = volume(rng, shape=(12, 10, 8))
    root = tmp_path / "r"
    write_nifti(root / "imagesTr" / "a.nii.gz", img, spacing=(1.0, 2.0, 3.0))
    # label stored with axes (j, i, k) and i reversed: affine columns permuted and negated accordingly
    import nibabel as nib

    lab_t = np.flip(lab, 0).transpose(1, 0, 2)
    aff = np.zeros((4, 4))
    aff[0, 1], aff[1, 0], aff[2, 2], aff[3, 3] = -1.0, 2.0, 3.0, 1.0
    aff[0, 3] = 11.0  # index 0 of the reversed axis is the image's last i (11 mm)
    (root / "labelsTr").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lab_t), aff), str(root / "labelsTr" / "a.nii.gz"))
    write_nifti(root / "imagesTr" / "b.nii.gz", img + 1, spacing=(1.0, 2.0, 3.0))
    write_nifti(root / "labelsTr" / "b.nii.gz", lab, spacing=(1.0, 2.0, 3.0))
    idx = build_index(root, tmp_path / "i.json", cfg_over("folds.k=2"))
    a = next(c for c in idx.all_cases if c.image[0].endswith("a.nii.gz")).fingerprint
    b = next(c for c in idx.all_cases if c.image[0].endswith("b.nii.gz")).fingerprint
    assert a["label_reoriented"] and "label_reoriented" not in b
    assert a["label_voxels"] == b["label_voxels"]
    assert a["intensity"]["mean"] == pytest.approx(b["intensity"]["mean"] - 1, abs=1e-3)  # same voxels under the mask
    aff[0, 3] = 12.0  # one voxel off: not the same grid
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lab_t), aff), str(root / "labelsTr" / "a.nii.gz"))
    with pytest.raises(IndexValidationError, match="geometry differs"):
        load_index(tmp_path / "i.json")
