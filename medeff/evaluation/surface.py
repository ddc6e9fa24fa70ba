"""Per-label segmentation metrics on voxel masks: overlap, surface distances (mm), surface Dice, volumes (ml).

Surfaces are the boundary voxels of a mask (voxels of the mask with a face neighbour outside it, i.e.
``mask & ~binary_erosion(mask)`` with the face-connected structuring element). Distances from one surface to the other
come from ``scipy.ndimage.distance_transform_edt`` of the other surface's complement with ``sampling=spacing``, so
anisotropic voxels are honoured. The work is restricted to the bounding box of both masks (plus one voxel).

* HD95 = max(95th percentile of d(pred -> ref), 95th percentile of d(ref -> pred)) (as MONAI and medpy).
* ASSD (mean surface distance) = mean of all distances of both directions pooled.
* NSD at tolerance tau = (#pred surface voxels within tau of ref + #ref surface voxels within tau of pred) /
  (#pred surface voxels + #ref surface voxels) (voxel-count form of Nikolov et al. 2021).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["EmptyConventions", "label_metrics", "surface_distances"]

METRIC_KEYS = ("dice", "iou", "hd95", "assd", "nsd", "volume_pred_ml", "volume_ref_ml", "volume_error_ml",
               "volume_error_rel")


@dataclass(frozen=True)
class EmptyConventions:
    """What to report when a label is absent from the reference and/or the prediction.

    Attributes:
        both_empty: ``"nan"`` (excluded from aggregates, nnU-Net style) or ``"perfect"`` (Dice = IoU = NSD = 1,
            HD95 = ASSD = 0).
        one_empty_distance: ``"nan"`` (distances excluded), ``"diagonal"`` (penalty = the image diagonal in mm) or
            a number of mm. Dice, IoU and NSD are 0 when exactly one mask is empty.
    """

    both_empty: str = "nan"
    one_empty_distance: str | float = "nan"

    def __post_init__(self) -> None:
        if self.both_empty not in ("nan", "perfect"):
            raise ValueError(f"both_empty must be 'nan' or 'perfect', got {self.both_empty!r}.")
        v = self.one_empty_distance
        if not (v in ("nan", "diagonal") or isinstance(v, (int, float))):
            try:
                float(v)
            except (TypeError, ValueError):
                raise ValueError(f"one_empty_distance must be 'nan', 'diagonal' or a number (mm), got {v!r}.") from None

    def penalty(self, shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
        v = self.one_empty_distance
        if v == "nan":
            return float("nan")
        if v == "diagonal":
            return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))
        return float(v)


def _edges(mask: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))
    return mask & ~eroded


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each prediction surface voxel to the reference surface, and the reverse.

    Both masks must be non-empty.
    """
    union = pred | ref
    idx = np.nonzero(union)
    lo = [max(int(i.min()) - 1, 0) for i in idx]
    hi = [min(int(i.max()) + 2, n) for i, n in zip(idx, union.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    ep, er = _edges(pred[box]), _edges(ref[box])
    sampling = tuple(float(s) for s in spacing)
    d_ref = ndimage.distance_transform_edt(~er, sampling=sampling)
    d_pred = ndimage.distance_transform_edt(~ep, sampling=sampling)
    return d_ref[ep], d_pred[er]


def label_metrics(pred: np.ndarray, ref: np.ndarray, spacing, *, tolerance_mm: float = 2.0,
                  conventions: EmptyConventions = EmptyConventions(),
                  image_shape: tuple[int, ...] | None = None) -> dict:
    """Dice, IoU, HD95, ASSD, NSD and volumes of one label.

    Args:
        pred: boolean prediction mask.
        ref: boolean reference mask (same shape).
        spacing: voxel size per axis in mm.
        tolerance_mm: NSD tolerance.
        conventions: rules for empty masks.
        image_shape: shape of the whole image when ``pred``/``ref`` are crops (for the diagonal penalty).

    Returns:
        dict of the metrics in :data:`METRIC_KEYS` plus ``tp``, ``fp``, ``fn`` voxel counts and ``empty`` ("none",
        "reference", "prediction" or "both").
    """
    pred = np.asarray(pred, bool)
    ref = np.asarray(ref, bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    tp = int(np.count_nonzero(pred & ref))
    n_p, n_r = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    fp, fn = n_p - tp, n_r - tp
    out = {"tp": tp, "fp": fp, "fn": fn, "volume_pred_ml": n_p * voxel_ml, "volume_ref_ml": n_r * voxel_ml}
    out["volume_error_ml"] = out["volume_pred_ml"] - out["volume_ref_ml"]
    out["volume_error_rel"] = out["volume_error_ml"] / out["volume_ref_ml"] if n_r else float("nan")
    if n_p == 0 and n_r == 0:
        perfect = conventions.both_empty == "perfect"
        out.update(empty="both", dice=1.0 if perfect else np.nan, iou=1.0 if perfect else np.nan,
                   nsd=1.0 if perfect else np.nan, hd95=0.0 if perfect else np.nan, assd=0.0 if perfect else np.nan)
        return out
    out["dice"] = 2.0 * tp / (n_p + n_r)
    out["iou"] = tp / (n_p + n_r - tp)
    if n_p == 0 or n_r == 0:
        pen = conventions.penalty(tuple(image_shape or pred.shape), tuple(spacing))
        out.update(empty="prediction" if n_p == 0 else "reference", nsd=0.0, hd95=pen, assd=pen)
        return out
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    out["empty"] = "none"
    out["hd95"] = float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
    out["assd"] = float(np.concatenate([d_pr, d_rp]).mean())
    tol = tolerance_mm + 1e-9
    out["nsd"] = float(((d_pr <= tol).sum() + (d_rp <= tol).sum()) / (len(d_pr) + len(d_rp)))
    return out
