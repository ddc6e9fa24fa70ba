"""NaN/inf voxels (`medeff index` reports the file; the data module and the transforms refuse instead of clipping)
and 4D NIfTI files in the index."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from index_fixtures import volume, write_dicom_series, write_npz_archive

from medeff.data import build_index
from medeff.data.datamodule import archive_items
from medeff.data.transforms import LoadImageDatad, eval_transforms
from medeff.errors import IndexValidationError, NonFiniteImageError


def _medeff_cause(exc: BaseException) -> BaseException:
    """The MedeffError inside MONAI's "applying transform" RuntimeError chain."""
    while not isinstance(exc, NonFiniteImageError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _problems(exc_info) -> list[tuple[str, str]]:
    return [(p.file, p.problem + " Fix: " + p.fix) for p in exc_info.value.problems]


def test_index_reports_dicom_series_whose_rescale_overflows(tmp_path, cfg_over):
    root = tmp_path / "dicom"
    for p in range(3):
        write_dicom_series(root / f"s{p}", series_uid=f"1.2.3.{p}", study_uid=f"1.2.9.{p}", patient_id=f"PX-{p:04d}",
                           seed=p, slope="1e38" if p == 1 else "1")
    with pytest.raises(IndexValidationError) as info:
        build_index(root, tmp_path / "d.json", cfg_over("folds.k=2"))
    problems = _problems(info)
    assert len(problems) == 1
    file, text = problems[0]
    assert file == "s1" and "infinite voxel(s)" in text and "RescaleSlope" in text


def test_index_reports_mha_image_with_nan(tmp_path, rng, cfg_over):
    root = tmp_path / "csv"
    root.mkdir()
    rows = ["image,label,patient_id"]
    for i in range(4):
        img, _ = volume(rng)
        if i == 2:
            img[1, 1, 1] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(img.transpose(2, 1, 0)), str(root / f"c{i}.mha"))
        rows.append(f"c{i}.mha,{'ab'[i % 2]},P{i}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(IndexValidationError) as info:
        build_index(root / "m.csv", tmp_path / "c.json", cfg_over("folds.k=2"))
    assert [(f, "1 NaN and 0 infinite" in t) for f, t in _problems(info)] == [("c2.mha", True)]


def _float_archive(tmp_path, rng):
    folder = write_npz_archive(tmp_path / "arc", rng, n_groups=6, with_csv=False)
    z = dict(np.load(folder / "slices.npz"))
    z["images"] = z["images"].astype(np.float32)
    np.savez(folder / "slices.npz", **z)
    return folder, z


def test_index_reports_archive_rows_with_inf(tmp_path, rng, cfg_over):
    folder, z = _float_archive(tmp_path, rng)
    z["images"][0, 3, 3] = np.inf
    np.savez(folder / "slices.npz", **z)
    with pytest.raises(IndexValidationError) as info:
        build_index(folder, tmp_path / "a.json", cfg_over("folds.k=2"))
    assert [(f, "0 NaN and 1 infinite" in t) for f, t in _problems(info)] == [("slices.npz", True)]


def test_archive_items_refuse_nan_rows(tmp_path, rng):
    folder, z = _float_archive(tmp_path, rng)
    key = str(z["nodule_key"][0])
    rows = [int(r) for r in np.flatnonzero(z["nodule_key"] == key)]
    good = [int(r) for r in np.flatnonzero(z["nodule_key"] != key)][:2]
    z["images"][rows[-1], 0, 0] = np.nan
    np.savez(folder / "slices.npz", **z)
    path = str(folder / "slices.npz")
    assert len(archive_items([{"image": path, "rows": good, "case_id": "ok"}])) == 2
    with pytest.raises(NonFiniteImageError) as info:
        archive_items([{"image": path, "rows": rows, "case_id": "bad_case"}])
    assert "slices.npz" in str(info.value) and "bad_case" in str(info.value) and "1 NaN" in str(info.value)


def test_window_does_not_clip_inf_in_memory_images():
    """An inf pixel used to be clipped to the window's top (1.0) without a word."""
    tf = eval_transforms({"intensity": {"mode": "window", "window": [-1000, 400], "clip": True}}, spatial_dims=2,
                         has_label=False, load=False)
    ok = np.zeros((1, 8, 8), np.float32)
    assert torch.as_tensor(tf({"image": ok, "case_id": "c0"})["image"]).max() == pytest.approx(1000 / 1400)
    bad = ok.copy()
    bad[0, 2, 2] = np.inf
    with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps what a transform raises
        tf({"image": bad, "case_id": "c7", "row": 12})
    err = _medeff_cause(info.value)
    assert isinstance(err, NonFiniteImageError) and "case 'c7', archive row 12" in str(err)
    # integer slices (the usual uint8 archive) are never scanned and pass unchanged
    assert torch.as_tensor(tf({"image": np.zeros((1, 8, 8), np.uint8)})["image"]).shape == (1, 8, 8)


def test_load_transform_refuses_nan_arrays_and_files(tmp_path, rng):
    load = LoadImageDatad(["image"])
    with pytest.raises(NonFiniteImageError, match="case 'm1'"):
        load({"image": np.full((1, 4, 4, 4), np.nan, np.float32), "case_id": "m1"})
    img, _ = volume(rng)
    img[0, 0, 0] = -np.inf
    path = tmp_path / "x.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(img.transpose(2, 1, 0)), str(path))
    with pytest.raises(NonFiniteImageError, match="x.nrrd"):
        load({"image": str(path)})
    # float64 values beyond the float32 range would become inf in the cast
    big = np.full((4, 4, 4), 1e300)
    sitk.WriteImage(sitk.GetImageFromArray(big), str(tmp_path / "big.nrrd"))
    with pytest.raises(NonFiniteImageError, match="float32"):
        load({"image": str(tmp_path / "big.nrrd")})


def test_index_reads_x_y_z_1_and_reports_real_4d_images(nifti_folders, tmp_path, cfg_over):
    import nibabel as nib

    one = nifti_folders / "imagesTr" / "pat1_visit0.nii.gz"
    img = nib.load(str(one))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine), str(one))
    idx = build_index(nifti_folders, tmp_path / "ok.json", cfg_over("folds.k=2"))
    assert [c.fingerprint["shape"] for c in idx.all_cases if c.image[0].endswith("pat1_visit0.nii.gz")] == [[12, 10, 8]]
    three = nifti_folders / "imagesTr" / "pat2_visit1.nii.gz"
    img = nib.load(str(three))
    nib.save(nib.Nifti1Image(np.stack([np.asarray(img.dataobj)] * 3, axis=-1), img.affine), str(three))
    with pytest.raises(IndexValidationError) as info:
        build_index(nifti_folders, tmp_path / "bad.json", cfg_over("folds.k=2"))
    [(file, text)] = _problems(info)
    assert file == "imagesTr/pat2_visit1.nii.gz" and "holds 3 volumes" in text and "split it into 3D files" in text
