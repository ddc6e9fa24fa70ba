"""Texture features of masked 2D nodule slices: medeff's own subset of the IBSI GLCM, GLRLM and GLSZM features.

pyradiomics (the reference implementation of the Image Biomarker Standardisation Initiative features) has no wheel
for this environment, so medeff computes a documented subset itself, in numpy/scipy, following the IBSI
definitions (Zwanenburg et al., *Radiology* 2020, and the IBSI reference manual, chapter 3.6-3.8):

* **Discretisation**: the ROI intensities (``image > 0``, holes filled, as in :mod:`medeff.pipelines.radiomics`)
  are binned with a fixed bin width of :data:`BIN_WIDTH` grey values on the archive's 0..255 scale, giving at most
  :data:`N_LEVELS` levels (1-based). A fixed bin width keeps the levels comparable between nodules.
* **GLCM** (grey-level co-occurrence matrix): distance 1, the four 2D directions (0, 45, 90, 135 degrees), pairs
  counted only when both pixels lie in the ROI, symmetric, each direction's matrix normalised and its features
  averaged over the directions (IBSI "2D, averaged"). Features: ``glcm_contrast``, ``glcm_dissimilarity``,
  ``glcm_homogeneity`` (inverse difference), ``glcm_idm`` (inverse difference moment), ``glcm_energy`` (angular
  second moment), ``glcm_entropy`` (joint entropy, bits), ``glcm_correlation``, ``glcm_cluster_shade``,
  ``glcm_cluster_prominence``.
* **GLRLM** (grey-level run-length matrix): runs of equal level along the same four directions, inside the ROI,
  features averaged over the directions: ``glrlm_sre`` (short-run emphasis), ``glrlm_lre`` (long-run emphasis),
  ``glrlm_gln`` (grey-level non-uniformity, normalised), ``glrlm_rln`` (run-length non-uniformity, normalised),
  ``glrlm_rp`` (run percentage).
* **GLSZM** (grey-level size-zone matrix): 8-connected zones of equal level: ``glszm_sae`` (small-area emphasis),
  ``glszm_lae`` (large-area emphasis), ``glszm_gln`` and ``glszm_szn`` (grey-level and zone-size
  non-uniformity, normalised), ``glszm_zp`` (zone percentage).

An ROI of fewer than two pixels gives zeros. The values of ``lidc_nodule_slices_64`` are windowed 8-bit, not HU,
and about half of the nodule pixels are saturated at 255, which limits what texture can show there.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["TEXTURE_FEATURES", "BIN_WIDTH", "N_LEVELS", "discretise", "glcm_features", "glrlm_features",
           "glszm_features", "texture_features"]

BIN_WIDTH = 16
N_LEVELS = 256 // BIN_WIDTH
GLCM_FEATURES = ("glcm_contrast", "glcm_dissimilarity", "glcm_homogeneity", "glcm_idm", "glcm_energy",
                 "glcm_entropy", "glcm_correlation", "glcm_cluster_shade", "glcm_cluster_prominence")
GLRLM_FEATURES = ("glrlm_sre", "glrlm_lre", "glrlm_gln", "glrlm_rln", "glrlm_rp")
GLSZM_FEATURES = ("glszm_sae", "glszm_lae", "glszm_gln", "glszm_szn", "glszm_zp")
TEXTURE_FEATURES = GLCM_FEATURES + GLRLM_FEATURES + GLSZM_FEATURES

_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1))  # 0, 45, 90, 135 degrees as (row, column) steps


def discretise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grey levels 1..N_LEVELS inside ``mask`` (fixed bin width :data:`BIN_WIDTH`), 0 outside."""
    levels = np.clip(np.asarray(image, dtype=np.int64) // BIN_WIDTH, 0, N_LEVELS - 1) + 1
    return np.where(mask, levels, 0)


def _shifted_pairs(q: np.ndarray, dr: int, dc: int) -> tuple[np.ndarray, np.ndarray]:
    """Level pairs (a, b) of pixel p and p + (dr, dc), both inside the ROI (level > 0)."""
    h, w = q.shape
    r0, r1 = max(0, -dr), h - max(0, dr)
    c0, c1 = max(0, -dc), w - max(0, dc)
    a = q[r0:r1, c0:c1]
    b = q[r0 + dr:r1 + dr, c0 + dc:c1 + dc]
    keep = (a > 0) & (b > 0)
    return a[keep], b[keep]


def glcm_features(q: np.ndarray) -> np.ndarray:
    """GLCM features (ordered as ``GLCM_FEATURES``) of a discretised slice (:func:`discretise`)."""
    n = N_LEVELS
    i, j = np.meshgrid(np.arange(1, n + 1), np.arange(1, n + 1), indexing="ij")
    per_dir = []
    for dr, dc in _DIRECTIONS:
        a, b = _shifted_pairs(q, dr, dc)
        if a.size == 0:
            continue
        m = np.zeros((n, n))
        np.add.at(m, (a - 1, b - 1), 1.0)
        m = m + m.T  # symmetric
        p = m / m.sum()
        mu = (i * p).sum()  # equal for rows and columns of a symmetric matrix
        var = (((i - mu) ** 2) * p).sum()
        d = np.abs(i - j)
        nz = p[p > 0]
        corr = (((i - mu) * (j - mu) * p).sum() / var) if var > 0 else 1.0
        per_dir.append([(d**2 * p).sum(), (d * p).sum(), (p / (1.0 + d)).sum(), (p / (1.0 + d**2)).sum(),
                        (p**2).sum(), float(-(nz * np.log2(nz)).sum()), corr,
                        (((i + j - 2 * mu) ** 3) * p).sum(), (((i + j - 2 * mu) ** 4) * p).sum()])
    if not per_dir:
        return np.zeros(len(GLCM_FEATURES))
    return np.mean(np.asarray(per_dir, dtype=np.float64), axis=0)


def _runs(line: np.ndarray) -> list[tuple[int, int]]:
    """(level, length) of the runs of equal non-zero level along a 1D array (zeros break runs)."""
    out = []
    if line.size == 0:
        return out
    change = np.flatnonzero(np.diff(line)) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, line.size]
    for s, e in zip(starts, ends):
        if line[s] > 0:
            out.append((int(line[s]), int(e - s)))
    return out


def _lines(q: np.ndarray, dr: int, dc: int) -> list[np.ndarray]:
    """The lines of ``q`` along a direction: rows, columns, diagonals or anti-diagonals."""
    if (dr, dc) == (0, 1):
        return list(q)
    if (dr, dc) == (1, 0):
        return list(q.T)
    src = q if (dr, dc) == (1, 1) else q[:, ::-1]
    h, w = src.shape
    return [np.diagonal(src, k) for k in range(-h + 1, w)]


def glrlm_features(q: np.ndarray) -> np.ndarray:
    """GLRLM features (ordered as ``GLRLM_FEATURES``) of a discretised slice, averaged over four directions."""
    n_pix = int((q > 0).sum())
    if n_pix < 2:
        return np.zeros(len(GLRLM_FEATURES))
    per_dir = []
    for dr, dc in _DIRECTIONS:
        runs = [r for line in _lines(q, dr, dc) for r in _runs(line)]
        levels = np.array([r[0] for r in runs])
        lengths = np.array([r[1] for r in runs], dtype=np.float64)
        n_runs = float(len(runs))
        gl_counts = np.bincount(levels, minlength=N_LEVELS + 1)[1:]
        rl_counts = np.bincount(lengths.astype(int))[1:]
        per_dir.append([(1.0 / lengths**2).sum() / n_runs, (lengths**2).sum() / n_runs,
                        (gl_counts**2).sum() / n_runs**2, (rl_counts**2).sum() / n_runs**2, n_runs / n_pix])
    return np.mean(np.asarray(per_dir, dtype=np.float64), axis=0)


def glszm_features(q: np.ndarray) -> np.ndarray:
    """GLSZM features (ordered as ``GLSZM_FEATURES``) of a discretised slice (8-connected zones)."""
    n_pix = int((q > 0).sum())
    if n_pix < 2:
        return np.zeros(len(GLSZM_FEATURES))
    eight = np.ones((3, 3), dtype=bool)
    sizes, levels = [], []
    for level in np.unique(q[q > 0]):
        lab, n = ndimage.label(q == level, structure=eight)
        s = np.bincount(lab.ravel())[1:]
        sizes.extend(s.tolist())
        levels.extend([int(level)] * n)
    sizes_a = np.asarray(sizes, dtype=np.float64)
    n_zones = float(len(sizes))
    gl_counts = np.bincount(np.asarray(levels), minlength=N_LEVELS + 1)[1:]
    sz_counts = np.bincount(sizes_a.astype(int))[1:]
    return np.array([(1.0 / sizes_a**2).sum() / n_zones, (sizes_a**2).sum() / n_zones,
                     (gl_counts**2).sum() / n_zones**2, (sz_counts**2).sum() / n_zones**2, n_zones / n_pix])


def texture_features(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """All texture features (ordered as :data:`TEXTURE_FEATURES`) of one masked 2D slice.

    Args:
        image: (H, W) slice on the 0..255 scale, background 0.
        mask: ROI; default ``image > 0`` with holes filled.

    Raises:
        ValueError: the image is not 2D or the mask has another shape.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"texture_features needs a 2D image, got shape {image.shape}.")
    if mask is None:
        mask = ndimage.binary_fill_holes(image > 0)
    elif np.shape(mask) != image.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from the image shape {image.shape}.")
    q = discretise(image, np.asarray(mask, dtype=bool))
    return np.r_[glcm_features(q), glrlm_features(q), glszm_features(q)]
