"""Radiomics-style baseline features of masked 2D nodule slices: first-order intensity and shape, per nodule.

Each slice is a 2D image whose background is 0 (the nodule segmentation was applied before). The region of
interest is ``image > 0`` with holes filled. Per slice:

* first order (over the ROI pixels): mean, standard deviation, 10th/25th/50th/75th/90th percentiles, skewness,
  excess kurtosis, entropy of a 32-bin histogram over [0, 256) (bits);
* shape: area (pixels), perimeter (number of pixel edges between ROI and background, 4-connectivity),
  eccentricity and major/minor axis lengths (from the second moments of the ROI), compactness
  ``4 pi area / perimeter**2`` and extent (area / bounding-box area).

Per nodule (:func:`nodule_features`): the mean of every slice feature over the nodule's slices, plus the largest
area, the summed area (a volume proxy) and the number of slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats

__all__ = ["SLICE_FEATURES", "NODULE_EXTRA_FEATURES", "slice_features", "nodule_features"]

SLICE_FEATURES = (
    "mean", "std", "p10", "p25", "p50", "p75", "p90", "skewness", "kurtosis", "entropy",
    "area", "perimeter", "eccentricity", "major_axis", "minor_axis", "compactness", "extent",
)
NODULE_EXTRA_FEATURES = ("max_area", "sum_area", "n_slices")

_HIST_BINS = 32


def _roi(image: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(image > 0)


def _perimeter(mask: np.ndarray) -> int:
    """Pixel edges between the mask and the background (outside the image counts as background)."""
    m = np.pad(mask, 1).astype(np.int8)
    return int(np.abs(np.diff(m, axis=0)).sum() + np.abs(np.diff(m, axis=1)).sum())


def slice_features(image: np.ndarray) -> np.ndarray:
    """Feature vector (ordered as :data:`SLICE_FEATURES`) of one masked 2D slice.

    Args:
        image: (H, W) array, background 0.

    Returns:
        float64 array of ``len(SLICE_FEATURES)`` values. An empty slice (no pixel above 0) gives zeros.

    Raises:
        ValueError: the image is not 2D.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"slice_features needs a 2D image, got shape {image.shape}.")
    mask = _roi(image)
    area = int(mask.sum())
    if area == 0:
        return np.zeros(len(SLICE_FEATURES))
    v = image[mask].astype(np.float64)
    p10, p25, p50, p75, p90 = np.percentile(v, [10, 25, 50, 75, 90])
    std = float(v.std())
    skew = float(stats.skew(v)) if std > 0 else 0.0
    kurt = float(stats.kurtosis(v)) if std > 0 else 0.0
    hist = np.histogram(v, bins=_HIST_BINS, range=(0, 256))[0] / v.size
    hist = hist[hist > 0]
    entropy = float(-(hist * np.log2(hist)).sum())
    rr, cc = np.nonzero(mask)
    cov = np.cov(np.vstack([rr, cc])) if area > 1 else np.zeros((2, 2))
    ev = np.sort(np.clip(np.linalg.eigvalsh(cov), 0.0, None))[::-1]
    major, minor = 4.0 * np.sqrt(ev[0]), 4.0 * np.sqrt(ev[1])
    ecc = float(np.sqrt(1.0 - ev[1] / ev[0])) if ev[0] > 0 else 0.0
    perim = _perimeter(mask)
    compact = 4.0 * np.pi * area / perim**2 if perim else 0.0
    extent = area / float((np.ptp(rr) + 1) * (np.ptp(cc) + 1))
    return np.array([v.mean(), std, p10, p25, p50, p75, p90, skew, kurt, entropy,
                     area, perim, ecc, major, minor, compact, extent], dtype=np.float64)


def nodule_features(images: np.ndarray, keys: Sequence[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """Per-nodule features: slice features averaged over each nodule's slices, plus area extremes and count.

    Args:
        images: (N, H, W) masked slices.
        keys: (N,) nodule key of each slice.

    Returns:
        ``(nodule_keys, features, names)``: nodule keys in first-appearance order, an array
        ``(n_nodules, len(names))`` and the feature names (:data:`SLICE_FEATURES` then
        :data:`NODULE_EXTRA_FEATURES`).

    Raises:
        ValueError: images and keys differ in length.
    """
    keys = [str(k) for k in keys]
    if len(keys) != len(images):
        raise ValueError(f"{len(images)} images but {len(keys)} nodule keys.")
    per_slice = np.stack([slice_features(im) for im in images]) if len(keys) else np.zeros((0, len(SLICE_FEATURES)))
    order: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        order.setdefault(k, []).append(i)
    area = SLICE_FEATURES.index("area")
    rows = []
    for rows_of in order.values():
        f = per_slice[rows_of]
        rows.append(np.r_[f.mean(axis=0), f[:, area].max(), f[:, area].sum(), len(rows_of)])
    names = list(SLICE_FEATURES) + list(NODULE_EXTRA_FEATURES)
    return list(order), np.asarray(rows, dtype=np.float64).reshape(len(order), len(names)), names
