"""Segmentation report overlays: worst and median case, contours on the image, only when images are given."""

from __future__ import annotations

import base64
import io
import json
import logging

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pandas as pd

from medeff.evaluation import evaluate_segmentation, render_report

SHIFTS = [0, 1, 2, 4, 6]  # prediction shifted by this many voxels: case 4 is the worst, case 2 the median


def _write(tmp_path, image_shape=(20, 20, 12)):
    rows = []
    rng = np.random.default_rng(0)
    for i, shift in enumerate(SHIFTS):
        ref = np.zeros((20, 20, 12), np.uint8)
        ref[5:13, 5:13, 3:9] = 1
        pred = np.zeros_like(ref)
        pred[5 + shift:13 + shift, 5:13, 3:9] = 1
        img = rng.normal(0, 20, image_shape).astype(np.float32)
        img[5:13, 5:13, 3:9] += 100.0  # an "organ" brighter than the background
        for name, arr in ((f"ref{i}", ref), (f"pred{i}", pred), (f"DOE_JOHN_img{i}", img)):
            nib.save(nib.Nifti1Image(arr, np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / f"{name}.nii.gz")
        rows.append({"case_id": f"c{i}", "prediction": f"pred{i}.nii.gz", "reference": f"ref{i}.nii.gz",
                     "image": f"DOE_JOHN_img{i}.nii.gz"})
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    return tmp_path / "index.csv"


def test_worst_and_median_case_overlays(tmp_path):
    index = _write(tmp_path)
    res = evaluate_segmentation(index, columns={"image": "image"}, n_resamples=20, hash_case_ids=False)
    ov = {o["which"]: o for o in res["overlays"]}
    assert set(ov) == {"worst", "median"}
    assert ov["worst"]["case"] == "c4" and ov["median"]["case"] == "c2"
    assert ov["worst"]["slices"] == [4, 6, 7]  # 25/50/75% of the reference extent (slices 3..8)
    png = mpimg.imread(io.BytesIO(base64.b64decode(ov["worst"]["png"])), format="png")
    rgb = png[..., :3]
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    green = (rgb[..., 1] > 0.8) & (rgb[..., 0] < 0.3) & (rgb[..., 2] < 0.3)
    assert red.sum() > 50 and green.sum() > 50  # both contours drawn
    assert "DOE_JOHN" not in json.dumps(res)  # the image path never reaches the results
    render_report(res, tmp_path / "out", formats=["html"])
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Worst case by mean Dice (c4" in html and "Median case by mean Dice (c2" in html


def test_no_image_column_no_overlays_and_bad_image_is_left_out(tmp_path, caplog):
    index = _write(tmp_path, image_shape=(20, 20, 10))  # images on another grid than the masks
    assert evaluate_segmentation(index, n_resamples=20)["overlays"] == []
    with caplog.at_level(logging.WARNING):
        res = evaluate_segmentation(index, columns={"image": "image"}, n_resamples=20)
    assert res["overlays"] == [] and "left out: the image has shape" in caplog.text
