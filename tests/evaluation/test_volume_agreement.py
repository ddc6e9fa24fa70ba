"""Segmentation volume agreement: Bland-Altman bias and limits of agreement in ml from the voxel spacing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medeff.evaluation import evaluate_segmentation, render_report
from medeff.evaluation.volume_agreement import weighted_bland_altman

EXTRA_SLICES = [0, 1, 2, 3, 5]  # prediction of case i is EXTRA_SLICES[i] slices of 10 x 10 voxels too large


def _write(tmp_path):
    for i, k in enumerate(EXTRA_SLICES):
        ref = np.zeros((16, 16, 14), np.uint8)
        pred = np.zeros_like(ref)
        ref[2:12, 2:12, 2:6] = 1
        pred[2:12, 2:12, 2:6 + k] = 1
        if i != 0:  # label 2 absent from both masks of case 0: not part of its agreement
            ref[13:15, 13:15, 10:12] = 2
            pred[13:15, 13:15, 10:13] = 2
        for folder, arr in (("ref", ref), ("pred", pred)):
            (tmp_path / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.diag([0.8, 0.8, 2.5, 1.0])), tmp_path / folder / f"case{i}.nii.gz")


def test_bias_and_limits_of_agreement_in_ml(tmp_path):
    _write(tmp_path)
    res = evaluate_segmentation(prediction_dir=tmp_path / "pred", reference_dir=tmp_path / "ref",
                                labels={1: "liver", 2: "spleen"}, n_resamples=200)
    voxel_ml = 0.8 * 0.8 * 2.5 / 1000.0
    diff = np.array(EXTRA_SLICES) * 100 * voxel_ml
    va = {v["name"]: v for v in res["volume_agreement"]}
    m = {r["key"]: r for r in va["liver"]["metrics"]}
    assert va["liver"]["n"] == 5
    assert m["bias_ml"]["value"] == pytest.approx(diff.mean())
    assert m["sd_ml"]["value"] == pytest.approx(diff.std(ddof=1))
    assert m["loa_low_ml"]["value"] == pytest.approx(diff.mean() - 1.959964 * diff.std(ddof=1), rel=1e-6)
    assert m["loa_high_ml"]["value"] == pytest.approx(diff.mean() + 1.959964 * diff.std(ddof=1), rel=1e-6)
    assert m["bias_ml"]["unit"] == "ml" and m["bias_ml"]["ci_low"] < m["bias_ml"]["value"] < m["bias_ml"]["ci_high"]
    s = {r["key"]: r for r in va["spleen"]["metrics"]}
    assert va["spleen"]["n"] == 4 and va["spleen"]["n_excluded_both_empty"] == 1
    assert s["bias_ml"]["value"] == pytest.approx(4 * voxel_ml) and s["sd_ml"]["value"] == pytest.approx(0.0)

    render_report(res, tmp_path / "out", formats=["html", "csv"])
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Volume agreement (Bland-Altman)" in html and "Bland-Altman plot of volumes (ml): liver, spleen" in html
    assert "Dice similarity coefficient" in html  # beside Dice/HD95/NSD
    metrics = (tmp_path / "out" / "metrics.csv").read_text(encoding="utf-8")
    assert "volume_agreement,liver,loa_high_ml" in metrics


def test_weighted_bland_altman_counts_resampled_cases():
    d = np.array([1.0, 2.0, 4.0])
    out = weighted_bland_altman(d, np.array([[2.0, 1.0, 0.0]]))
    same = np.array([1.0, 1.0, 2.0])
    assert out[0, 0] == pytest.approx(same.mean()) and out[1, 0] == pytest.approx(same.std(ddof=1))
