"""medeff's IBSI-style texture subset (medeff.pipelines.texture): GLCM, GLRLM and GLSZM of masked slices."""

from __future__ import annotations

import numpy as np
import pytest

from medeff.pipelines.texture import (BIN_WIDTH, GLCM_FEATURES, GLRLM_FEATURES, GLSZM_FEATURES, N_LEVELS,
                                      TEXTURE_FEATURES, discretise, glcm_features, texture_features)


def _named(image) -> dict[str, float]:
    return dict(zip(TEXTURE_FEATURES, texture_features(image)))


def test_constant_square():
    im = np.zeros((64, 64), np.uint8)
    im[10:30, 20:40] = 100  # 20 x 20, one grey level
    f = _named(im)
    assert f["glcm_contrast"] == 0 and f["glcm_dissimilarity"] == 0
    assert f["glcm_homogeneity"] == 1 and f["glcm_idm"] == 1 and f["glcm_energy"] == 1 and f["glcm_entropy"] == 0
    # one zone of 400 pixels
    assert f["glszm_sae"] == pytest.approx(1 / 400**2) and f["glszm_lae"] == 400**2
    assert f["glszm_gln"] == 1 and f["glszm_szn"] == 1 and f["glszm_zp"] == pytest.approx(1 / 400)
    # rows and columns: 20 runs of 20; diagonals: 39 runs of lengths 1..20..1 (mean over the four directions)
    diag = np.r_[np.arange(1, 21), np.arange(19, 0, -1)].astype(float)
    lre = np.mean([400.0, 400.0, (diag**2).mean(), (diag**2).mean()])
    rp = np.mean([20 / 400, 20 / 400, 39 / 400, 39 / 400])
    assert f["glrlm_lre"] == pytest.approx(lre) and f["glrlm_rp"] == pytest.approx(rp)


def test_checkerboard_contrast_by_direction():
    im = np.where((np.add.outer(np.arange(16), np.arange(16)) % 2) == 0, 40, 200).astype(np.uint8)
    q = discretise(im, np.ones_like(im, bool))
    assert set(np.unique(q)) == {40 // BIN_WIDTH + 1, 200 // BIN_WIDTH + 1}
    d = 200 // BIN_WIDTH - 40 // BIN_WIDTH
    f = dict(zip(GLCM_FEATURES, glcm_features(q)))
    # horizontal and vertical neighbours always differ by d levels, diagonal ones never: mean over 4 directions
    assert f["glcm_contrast"] == pytest.approx(d**2 / 2) and f["glcm_dissimilarity"] == pytest.approx(d / 2)
    # every pixel is its own zone (8-connectivity joins diagonal neighbours: two zones, one per level)
    g = dict(zip(GLSZM_FEATURES, texture_features(im)[len(GLCM_FEATURES) + len(GLRLM_FEATURES):]))
    assert g["glszm_zp"] == pytest.approx(2 / 256)


def test_glcm_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    im = rng.integers(1, 256, size=(12, 12)).astype(np.uint8)
    mask = np.zeros((12, 12), bool)
    mask[2:10, 1:11] = True
    mask[5, 5] = False
    q = discretise(im, mask)
    feats = []
    for dr, dc in ((0, 1), (1, 1), (1, 0), (1, -1)):
        m = np.zeros((N_LEVELS, N_LEVELS))
        for r in range(12):
            for c in range(12):
                r2, c2 = r + dr, c + dc
                if 0 <= r2 < 12 and 0 <= c2 < 12 and q[r, c] and q[r2, c2]:
                    m[q[r, c] - 1, q[r2, c2] - 1] += 1
                    m[q[r2, c2] - 1, q[r, c] - 1] += 1
        p = m / m.sum()
        i, j = np.indices(p.shape)
        feats.append([((i - j) ** 2 * p).sum(), (p**2).sum()])
    ref = np.mean(feats, axis=0)
    f = dict(zip(GLCM_FEATURES, glcm_features(q)))
    assert f["glcm_contrast"] == pytest.approx(ref[0]) and f["glcm_energy"] == pytest.approx(ref[1])


def test_empty_and_bad_inputs():
    assert not texture_features(np.zeros((8, 8), np.uint8)).any()
    with pytest.raises(ValueError, match="2D"):
        texture_features(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="mask shape"):
        texture_features(np.ones((8, 8)), np.ones((4, 4), bool))
