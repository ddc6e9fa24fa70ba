"""Radiomics-style features of masked slices and their per-nodule aggregation (medeff.pipelines.radiomics)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from medeff.pipelines.radiomics import NODULE_EXTRA_FEATURES, SLICE_FEATURES, nodule_features, slice_features


def _f(image) -> dict[str, float]:
    return dict(zip(SLICE_FEATURES, slice_features(image)))


def test_square_of_constant_intensity():
    im = np.zeros((64, 64), np.uint8)
    im[10:30, 20:40] = 100  # 20 x 20
    f = _f(im)
    assert f["area"] == 400 and f["perimeter"] == 80
    assert f["mean"] == 100 and f["std"] == 0 and f["p10"] == f["p90"] == 100
    assert f["skewness"] == 0 and f["kurtosis"] == 0 and f["entropy"] == 0
    assert f["eccentricity"] == pytest.approx(0, abs=1e-9)
    assert f["compactness"] == pytest.approx(np.pi / 4) and f["extent"] == 1


def test_rectangle_shape_and_two_level_intensity():
    im = np.zeros((64, 64), np.uint8)
    im[5:45, 30:35] = 50      # 40 rows x 5 columns
    im[5:25, 30:35] = 200     # upper half brighter
    f = _f(im)
    var_r, var_c = (40**2 - 1) / 12, (5**2 - 1) / 12  # sample-free variances of uniform pixel positions
    assert f["eccentricity"] == pytest.approx(np.sqrt(1 - var_c / var_r), rel=1e-3)
    assert f["major_axis"] == pytest.approx(4 * np.sqrt(var_r * 200 / 199), rel=1e-6)
    assert f["entropy"] == pytest.approx(1.0)  # two equally frequent bins
    v = im[im > 0].astype(float)
    assert f["skewness"] == pytest.approx(stats.skew(v)) and f["kurtosis"] == pytest.approx(stats.kurtosis(v))
    assert f["p50"] == pytest.approx(np.median(v)) and f["std"] == pytest.approx(v.std())


def test_holes_are_part_of_the_nodule_and_empty_slices_give_zeros():
    ring = np.zeros((32, 32), np.uint8)
    ring[8:24, 8:24] = 80
    ring[12:20, 12:20] = 0  # a dark (0) core inside the nodule
    f = _f(ring)
    assert f["area"] == 256 and f["perimeter"] == 64  # the core is filled, only the outer border counts
    assert f["mean"] == pytest.approx(80 * (256 - 64) / 256)
    assert not slice_features(np.zeros((16, 16))).any()
    with pytest.raises(ValueError):
        slice_features(np.zeros((2, 8, 8)))


def test_per_nodule_aggregation_is_the_mean_of_slices_plus_area_extremes(rng):
    images = rng.integers(0, 256, size=(5, 32, 32)).astype(np.uint8)
    images[:, :4] = 0
    keys = ["e1/1", "e2/7", "e1/1", "e1/1", "e2/7"]
    names_out, feats, names = nodule_features(images, keys)
    assert names_out == ["e1/1", "e2/7"]
    assert names == list(SLICE_FEATURES) + list(NODULE_EXTRA_FEATURES)
    per_slice = np.stack([slice_features(im) for im in images])
    area = SLICE_FEATURES.index("area")
    for row, idx in ((0, [0, 2, 3]), (1, [1, 4])):
        np.testing.assert_allclose(feats[row, :len(SLICE_FEATURES)], per_slice[idx].mean(axis=0))
        assert feats[row, names.index("max_area")] == per_slice[idx, area].max()
        assert feats[row, names.index("sum_area")] == per_slice[idx, area].sum()
        assert feats[row, names.index("n_slices")] == len(idx)
    with pytest.raises(ValueError):
        nodule_features(images, keys[:3])


def test_slice_probabilities_are_averaged_per_nodule():
    """The per-nodule aggregation used by `medeff predict` and the validation metrics: mean of slice probabilities."""
    from medeff.engine.metrics import aggregate_by_case

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    ids, p, t, counts = aggregate_by_case(probs, ["b/1", "a/2", "b/1", "a/2"], np.array([0, 1, 0, 1]))
    assert ids == ["b/1", "a/2"] and counts.tolist() == [2, 2] and t.tolist() == [0, 1]
    np.testing.assert_allclose(p, [[0.8, 0.2], [0.3, 0.7]])
