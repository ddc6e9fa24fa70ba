"""Overlays for the segmentation report: a few slices of the image of the worst and of the median case (by mean Dice
over labels) with the reference (green) and predicted (red) contours.

Made only when the segmentation index names an image per case (``columns.image``). They are drawn at evaluation time
and stored in the results as small PNG images (base64), so ``medeff report`` can re-render them without the image
files and no image path ever reaches an output. Slices are taken across the last array axis (axial for the usual
CT array order), at 25%, 50% and 75% of the extent of the reference foreground (else of the prediction, else the
middle slice); grey levels are windowed to the 1st-99th percentile of the shown slices.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

import numpy as np

from medeff.utils.logging import get_logger

__all__ = ["choose_cases", "overlay_record"]

log = get_logger(__name__)


def choose_cases(mean_dice: Mapping) -> list[tuple[str, object, float]]:
    """``[("worst", case, dice), ("median", case, dice)]`` from the mean Dice per case (NaN cases left out)."""
    items = sorted(((float(d), c) for c, d in mean_dice.items() if d is not None and np.isfinite(d)),
                   key=lambda t: t[0])
    if not items:
        return []
    out = [("worst", items[0][1], items[0][0])]
    mid = items[(len(items) - 1) // 2]
    if mid[1] != items[0][1]:
        out.append(("median", mid[1], mid[0]))
    return out


def _slices(ref: np.ndarray, pred: np.ndarray, n: int = 3) -> list[int]:
    depth = ref.shape[-1]
    for mask in (ref, pred):
        ks = np.flatnonzero(mask.reshape(-1, depth).any(axis=0))
        if len(ks):
            lo, hi = int(ks.min()), int(ks.max())
            picks = [int(round(lo + f * (hi - lo))) for f in ((0.25, 0.5, 0.75) if n == 3 else np.linspace(0, 1, n))]
            return sorted(set(picks))
    return [depth // 2]


def overlay_record(which: str, case: str, dice: float, image_path: str, pred: np.ndarray, ref: np.ndarray,
                   labels) -> dict | None:
    """Draw the overlay of one case; None (logged) when the image cannot be read or has another grid."""
    from matplotlib.figure import Figure

    from medeff.errors import MedeffError
    from medeff.io import read_image

    try:
        img = read_image(image_path).array
    except MedeffError as exc:
        log.warning("Overlay of the %s case %s left out: the image could not be read (%s).", which, case,
                    type(exc).__name__)
        return None
    img = np.squeeze(np.asarray(img, float))
    if img.shape != pred.shape or img.ndim not in (2, 3):
        log.warning("Overlay of the %s case %s left out: the image has shape %s but the masks %s.", which, case,
                    img.shape, pred.shape)
        return None
    if img.ndim == 2:
        img, pred, ref = img[..., None], pred[..., None], ref[..., None]
    keep = np.isin(ref, list(labels)) if labels else ref > 0
    keep_p = np.isin(pred, list(labels)) if labels else pred > 0
    ks = _slices(keep, keep_p)
    shown = np.stack([img[..., k] for k in ks])
    lo, hi = np.percentile(shown, [1, 99])
    fig = Figure(figsize=(3.3 * len(ks), 3.6), dpi=90)
    for i, k in enumerate(ks):
        ax = fig.add_subplot(1, len(ks), i + 1)
        ax.imshow(img[..., k].T, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="upper")
        for mask, colour in ((keep, "lime"), (keep_p, "red")):
            sl = mask[..., k].T.astype(float)
            if sl.any() and not sl.all():
                ax.contour(sl, levels=[0.5], colors=colour, linewidths=1.0)
        ax.set_title(f"slice {k}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{which} case {case}: mean Dice {dice:.3f} (green: reference, red: prediction)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return {"which": which, "case": case, "mean_dice": float(dice), "slices": ks,
            "png": base64.b64encode(buf.getvalue()).decode("ascii")}
