"""Segmentation metrics against MONAI on real masks, spacing handling, and the empty-mask conventions."""

from __future__ import annotations

import numpy as np
import pytest

from medeff.evaluation.surface import EmptyConventions, label_metrics

LABELS = (1, 2, 7)  # spleen, right kidney, pancreas (small)


@pytest.fixture(scope="module")
def real_masks(shared_data):
    import nibabel as nib

    d = shared_data / "ct_organs_totalsegmentator"
    ref, pred = nib.load(d / "example_seg.nii.gz"), nib.load(d / "example_seg_fast.nii.gz")
    assert ref.shape == pred.shape and np.allclose(ref.affine, pred.affine)  # same grid: comparable voxel by voxel
    return np.asarray(pred.dataobj), np.asarray(ref.dataobj), tuple(float(z) for z in ref.header.get_zooms())


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy")  # raised inside MONAI's own metric code
@pytest.mark.parametrize("spacing", [None, (0.8, 1.2, 3.0)])
def test_dice_hd95_assd_nsd_match_monai(real_masks, spacing):
    import torch
    from monai.metrics import (compute_average_surface_distance, compute_dice, compute_hausdorff_distance,
                               compute_surface_dice)

    pred, ref, native = real_masks
    sp = spacing or native
    for lab in LABELS:
        p, r = pred == lab, ref == lab
        assert p.any() and r.any()
        m = label_metrics(p, r, sp, tolerance_mm=3.0)
        tp, tr = torch.from_numpy(p)[None, None].float(), torch.from_numpy(r)[None, None].float()
        assert m["dice"] == pytest.approx(compute_dice(tp, tr, include_background=True).item(), abs=1e-6)
        hd = compute_hausdorff_distance(tp, tr, include_background=True, percentile=95, spacing=sp).item()
        assert m["hd95"] == pytest.approx(hd, abs=1e-4)
        asd = compute_average_surface_distance(tp, tr, include_background=True, symmetric=True, spacing=sp).item()
        assert m["assd"] == pytest.approx(asd, abs=1e-4)
        nsd = compute_surface_dice(tp, tr, class_thresholds=[3.0], include_background=True, spacing=sp).item()
        assert m["nsd"] == pytest.approx(nsd, abs=1e-5)
        assert m["iou"] == pytest.approx(m["dice"] / (2 - m["dice"]))
        assert m["volume_ref_ml"] == pytest.approx(r.sum() * np.prod(sp) / 1000)


def test_spacing_scales_distances():
    ref = np.zeros((30, 30, 30), bool)
    ref[10:20, 10:20, 10:20] = True
    pred = np.roll(ref, 2, axis=2)  # shifted by 2 voxels along the third axis
    iso = label_metrics(pred, ref, (1.0, 1.0, 1.0))
    aniso = label_metrics(pred, ref, (1.0, 1.0, 2.5))
    assert iso["hd95"] == pytest.approx(2.0)
    assert aniso["hd95"] == pytest.approx(5.0)
    assert aniso["dice"] == iso["dice"] == pytest.approx(0.8)
    assert aniso["volume_ref_ml"] == pytest.approx(1000 * 2.5 / 1000)


def test_empty_mask_conventions():
    empty = np.zeros((8, 8, 8), bool)
    full = empty.copy()
    full[2:5, 2:5, 2:5] = True
    both = label_metrics(empty, empty, (1, 1, 1))
    assert np.isnan(both["dice"]) and np.isnan(both["hd95"]) and both["empty"] == "both"
    perfect = label_metrics(empty, empty, (1, 1, 1), conventions=EmptyConventions(both_empty="perfect"))
    assert perfect["dice"] == 1.0 and perfect["hd95"] == 0.0 and perfect["nsd"] == 1.0
    missed = label_metrics(empty, full, (1, 1, 1))
    assert missed["dice"] == 0.0 and missed["nsd"] == 0.0 and np.isnan(missed["hd95"])
    assert missed["empty"] == "prediction"
    assert missed["volume_error_ml"] == pytest.approx(-27 / 1000)
    diag = label_metrics(full, empty, (1, 2, 3), conventions=EmptyConventions(one_empty_distance="diagonal"))
    assert diag["hd95"] == pytest.approx(np.sqrt(8**2 + 16**2 + 24**2)) and diag["empty"] == "reference"
    assert np.isnan(diag["volume_error_rel"])
    fixed = label_metrics(empty, full, (1, 1, 1), conventions=EmptyConventions(one_empty_distance=50))
    assert fixed["hd95"] == 50.0 and fixed["assd"] == 50.0
    with pytest.raises(ValueError, match="both_empty"):
        EmptyConventions(both_empty="zero")
