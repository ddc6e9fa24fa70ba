"""Segmentation evaluation reads every mask format in one geometry convention (LPS): the same label map stored as
NIfTI, NRRD, MHA and DICOM SEG scores Dice 1 against itself in every pair of formats, and a mirrored reference is
reported instead of being scored 0 silently."""

from __future__ import annotations

import importlib.util
import itertools

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medeff.errors import ImageReadError, InputError
from medeff.evaluation import evaluate_segmentation, render_report
from medeff.io import write_image
from medeff.io.base import ImageData

HAVE_HIGHDICOM = importlib.util.find_spec("highdicom") is not None
SHAPE = (20, 18, 12)
LABELS = {1: "liver", 2: "spleen", 3: "lesion"}


def _labels() -> np.ndarray:
    """Three labels placed asymmetrically along every axis, so any mirroring changes the overlap."""
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:9, 3:12, 1:6] = 1
    lab[12:18, 1:5, 6:10] = 2
    lab[4:7, 13:16, 8:11] = 3
    return lab


def _oblique() -> ImageData:
    """Rotated 25 degrees about the patient axis, rows and slices reversed, origin far from zero."""
    t = np.deg2rad(25.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    return ImageData(_labels(), (0.8, 0.9, 2.5), (-31.5, 12.25, 80.0), rot @ np.diag([1.0, -1.0, -1.0]))


def _centred() -> ImageData:
    """Identity direction, the grid centred on the world origin: an x/y mirror maps the grid onto itself."""
    spacing = (0.8, 0.9, 2.5)
    origin = tuple(-(n - 1) * s / 2 for n, s in zip(SHAPE, spacing))
    return ImageData(_labels(), spacing, origin, np.eye(3))


def _write_all(image: ImageData, folder, with_seg: bool) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        paths[suffix] = str(write_image(image, folder / f"mask{suffix}"))
    if with_seg:
        from medeff.demo.dicom_writer import write_ct_series
        from medeff.engine.dicom_seg import write_dicom_seg

        ct = ImageData(np.zeros(SHAPE, np.int16), image.spacing, image.origin, image.direction)
        write_ct_series(ct, folder / "ct")
        paths[".dcm"] = str(write_dicom_seg(image.array, image.affine_ras, folder / "ct", folder / "mask.dcm",
                                            label_names=["background", *LABELS.values()]))
    return paths


@pytest.mark.parametrize("geometry", [_oblique, _centred], ids=["oblique", "centred"])
def test_same_mask_in_every_format_pair_scores_dice_one(tmp_path, geometry):
    paths = _write_all(geometry(), tmp_path / "masks", with_seg=HAVE_HIGHDICOM)
    if HAVE_HIGHDICOM:
        assert len(paths) == 4
    pairs = list(itertools.product(sorted(paths), repeat=2))
    index = pd.DataFrame({"case_id": [f"{a}->{b}" for a, b in pairs], "prediction": [paths[a] for a, _ in pairs],
                          "reference": [paths[b] for _, b in pairs]})
    index.to_csv(tmp_path / "index.csv", index=False)
    for reorient in (False, True):
        res = evaluate_segmentation(tmp_path / "index.csv", labels=LABELS, n_resamples=10, hash_case_ids=False,
                                    reorient_reference=reorient)
        rows = pd.DataFrame(res["per_case"])
        assert len(rows) == len(pairs) * len(LABELS)
        bad = rows[rows["dice"] != 1.0]
        assert bad.empty, f"reorient_reference={reorient}: {bad[['case', 'label', 'dice']].to_dict('records')}"
        assert (rows["hd95"] == 0.0).all() and not res["warnings"]


@pytest.mark.skipif(not HAVE_HIGHDICOM, reason="writing the DICOM SEG of this test needs highdicom (test extra)")
def test_dicom_seg_is_matched_by_folder_name(tmp_path):
    image = _oblique()
    paths = _write_all(image, tmp_path / "seg", with_seg=True)
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred" / "case01.nrrd").write_bytes(open(paths[".nrrd"], "rb").read())
    (tmp_path / "ref" / "case01.dcm").write_bytes(open(paths[".dcm"], "rb").read())
    res = evaluate_segmentation(prediction_dir=tmp_path / "pred", reference_dir=tmp_path / "ref", n_resamples=10)
    assert [r["dice"] for r in res["per_case"]] == [1.0, 1.0, 1.0]


def test_header_mirror_found_by_reorientation_is_refused(tmp_path):
    """A reference whose NIfTI affine is the LPS matrix written as if it were RAS (a common export mistake): on a
    grid centred at the origin, reorient_reference finds an x/y flip that fits the headers exactly, which would
    mirror the voxels; the evaluation refuses it and says why."""
    image = _centred()
    pred = write_image(image, tmp_path / "pred.nrrd")
    nib.save(nib.Nifti1Image(image.array, image.affine_lps), tmp_path / "ref.nii.gz")  # LPS matrix stored as RAS
    index = pd.DataFrame({"case_id": ["a"], "prediction": [str(pred)], "reference": [str(tmp_path / "ref.nii.gz")]})
    index.to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(InputError, match="mirrored") as err:
        evaluate_segmentation(tmp_path / "index.csv", n_resamples=10, reorient_reference=True)
    assert "ref.nii.gz" in str(err.value) and "header" in str(err.value)
    with pytest.raises(InputError, match="different geometry"):  # the headers disagree: not the same grid as stored
        evaluate_segmentation(tmp_path / "index.csv", n_resamples=10, reorient_reference=False)


def test_mirrored_reference_content_is_reported(tmp_path):
    """Same header, voxels mirrored left-right: scored as placed, but flagged in the results and the report."""
    image = _oblique()
    pred = write_image(image, tmp_path / "pred.nii.gz")
    mirrored = ImageData(image.array[::-1].copy(), image.spacing, image.origin, image.direction)
    ref = write_image(mirrored, tmp_path / "ref.mha")
    index = pd.DataFrame({"case_id": ["case7"], "prediction": [str(pred)], "reference": [str(ref)]})
    index.to_csv(tmp_path / "index.csv", index=False)
    res = evaluate_segmentation(tmp_path / "index.csv", n_resamples=10, hash_case_ids=False)
    assert len(res["warnings"]) == 1 and "case7" in res["warnings"][0] and "mirrored" in res["warnings"][0]
    html = render_report(res, tmp_path / "rep", formats=("html",))["report.html"].read_text(encoding="utf-8")
    assert "Warnings" in html and "mirrored along array axis 0" in html


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_huge_label_value_is_refused_up_front(tmp_path, suffix):
    """A label value of 2**31 - 1 once made the evaluation allocate tables of that length (~17 GB)."""
    image = _oblique()
    pred = write_image(image, tmp_path / f"pred{suffix}")
    arr = image.array.astype(np.int32)
    arr[0, 0, 0] = 2**31 - 1
    ref = write_image(ImageData(arr, image.spacing, image.origin, image.direction), tmp_path / f"ref{suffix}")
    index = pd.DataFrame({"case_id": ["a"], "prediction": [str(pred)], "reference": [str(ref)]})
    index.to_csv(tmp_path / "index.csv", index=False)
    for kwargs in ({}, {"labels": [1, 2]}, {"reference_remap": {1: 1, 2: 2}}):
        with pytest.raises(ImageReadError, match="2147483647") as err:
            evaluate_segmentation(tmp_path / "index.csv", n_resamples=10, **kwargs)
        assert f"ref{suffix}" in str(err.value) and "65535" in str(err.value)
    with pytest.raises(InputError, match="segmentation.labels"):
        evaluate_segmentation(tmp_path / "index.csv", n_resamples=10, labels={2**31 - 1: "huge"})


def test_large_but_valid_label_values_are_scored(tmp_path):
    """Values up to 65535 are label values (e.g. atlas codes); they are scored without tables sized by the value."""
    image = _oblique()
    arr = image.array.astype(np.int32)
    arr[arr == 3] = 65535
    big = ImageData(arr, image.spacing, image.origin, image.direction)
    pred, ref = write_image(big, tmp_path / "pred.nii.gz"), write_image(big, tmp_path / "ref.nrrd")
    index = pd.DataFrame({"case_id": ["a"], "prediction": [str(pred)], "reference": [str(ref)]})
    index.to_csv(tmp_path / "index.csv", index=False)
    res = evaluate_segmentation(tmp_path / "index.csv", n_resamples=10)
    assert {r["label"]: r["dice"] for r in res["per_case"]} == {1: 1.0, 2: 1.0, 65535: 1.0}
