"""Dataset fingerprint: per-case and overall statistics a training planner reads (like nnU-Net's).

Per case: shape, spacing, orientation, intensity percentiles (0.5, 99.5), mean and std over the foreground when
a label map exists (else over the whole image), voxels per label, non-finite voxel count and an array hash.
Overall: median/min/max spacing and shape, orientations seen, pooled intensity statistics from a seeded sample of
each case's region, label presence and voxel totals, class balance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["intensity_stats", "case_fingerprint", "dataset_fingerprint"]


def intensity_stats(values: np.ndarray) -> dict[str, float | None]:
    """Percentiles 0.5/99.5, mean, std, min, max of the finite values (None when there are none)."""
    v = _finite(values)
    if v.size == 0:
        return {"p00_5": None, "p99_5": None, "mean": None, "std": None, "min": None, "max": None}
    p_lo, p_hi = np.percentile(v, [0.5, 99.5])
    return {
        "p00_5": float(p_lo),
        "p99_5": float(p_hi),
        "mean": float(v.mean(dtype=np.float64)),
        "std": float(v.std(dtype=np.float64)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _finite(values: np.ndarray) -> np.ndarray:
    """Flattened finite values, without a float64 copy of integer volumes."""
    v = np.asarray(values).ravel()
    if v.dtype.kind in "fc":
        v = v[np.isfinite(v)]
    elif v.dtype.kind == "b":
        v = v.astype(np.uint8)
    return v


def case_fingerprint(
    image: np.ndarray,
    label_map: np.ndarray | None,
    *,
    shape: Sequence[int],
    spacing: Sequence[float] | None,
    orientation: str | None,
    dtype: str,
    class_index: int | None = None,
    sample: int = 10000,
    seed: int = 0,
) -> tuple[dict[str, Any], np.ndarray]:
    """Fingerprint of one case.

    Args:
        image: voxels (first channel; for archives the stack of rows).
        label_map: integer label map on the same grid, or None.
        shape: spatial shape recorded for the case.
        spacing: mm per axis, or None.
        orientation: axis codes, or None.
        dtype: stored voxel type.
        class_index: class of a classification case.
        sample: voxels of the statistics region kept for the pooled dataset statistics.
        seed: seed for that sample.

    Returns:
        ``(fingerprint, sample_values)``.
    """
    img = np.asarray(image)
    finite = np.isfinite(img) if img.dtype.kind == "f" else None
    n_nonfinite = 0 if finite is None else int(img.size - np.count_nonzero(finite))
    fp: dict[str, Any] = {
        "shape": [int(s) for s in shape],
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "orientation": orientation,
        "dtype": dtype,
        "nonfinite_voxels": n_nonfinite,
    }
    if label_map is not None:
        lab = np.asarray(label_map)
        fg = lab != 0
        values = img[fg] if fg.shape == img.shape and fg.any() else img
        fp["intensity_region"] = "foreground" if values is not img else "image"
        ids, counts = np.unique(lab, return_counts=True)
        fp["label_voxels"] = {str(int(i)): int(c) for i, c in zip(ids, counts) if i != 0}
    else:
        values = img
        fp["intensity_region"] = "image"
    if class_index is not None:
        fp["class"] = int(class_index)
    fp["intensity"] = intensity_stats(values)
    flat = _finite(values)
    if flat.size > sample:
        flat = flat[np.random.default_rng(seed).choice(flat.size, size=sample, replace=False)]
    return fp, flat.astype(np.float64)


def _stats(arr: np.ndarray) -> dict[str, list[float]]:
    return {
        "median": [float(x) for x in np.median(arr, axis=0)],
        "min": [float(x) for x in arr.min(axis=0)],
        "max": [float(x) for x in arr.max(axis=0)],
    }


def dataset_fingerprint(
    fingerprints: Sequence[dict[str, Any]],
    samples: Sequence[np.ndarray],
    *,
    groups: Sequence[str],
    class_names: Sequence[str] = (),
) -> dict[str, Any]:
    """Overall statistics from the per-case fingerprints and intensity samples."""
    out: dict[str, Any] = {"num_cases": len(fingerprints), "num_groups": len(set(groups))}
    shapes = [fp["shape"] for fp in fingerprints]
    if shapes and len({len(s) for s in shapes}) == 1:
        out["shape"] = _stats(np.asarray(shapes, dtype=np.float64))
    spacings = [fp["spacing"] for fp in fingerprints if fp.get("spacing") is not None]
    if spacings and len({len(s) for s in spacings}) == 1:
        out["spacing"] = _stats(np.asarray(spacings, dtype=np.float64))
    else:
        out["spacing"] = None
    out["orientations"] = dict(Counter(fp["orientation"] for fp in fingerprints if fp.get("orientation")))
    pooled = np.concatenate([s for s in samples if s.size]) if any(s.size for s in samples) else np.zeros(0)
    out["intensity"] = intensity_stats(pooled)
    out["intensity"]["n_sampled"] = int(pooled.size)
    labelled = [fp["label_voxels"] for fp in fingerprints if "label_voxels" in fp]
    if labelled:
        voxels: Counter = Counter()
        present: Counter = Counter()
        for lv in labelled:
            for k, v in lv.items():
                voxels[k] += v
                present[k] += 1 if v > 0 else 0
        total = sum(voxels.values()) or 1
        out["labels"] = {
            k: {"cases_present": present[k], "voxels": voxels[k], "fraction_of_foreground": voxels[k] / total}
            for k in sorted(voxels, key=int)
        }
    classes = [fp["class"] for fp in fingerprints if "class" in fp]
    if classes:
        cnt = Counter(classes)
        n = len(classes)
        names = list(class_names) or [str(i) for i in range(max(cnt) + 1)]
        out["class_balance"] = {
            names[c] if c < len(names) else str(c): {"cases": cnt[c], "fraction": cnt[c] / n} for c in sorted(cnt)
        }
    return out
