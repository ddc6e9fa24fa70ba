"""Volume agreement of segmentation masks per label: Bland-Altman bias and 95% limits of agreement, in ml.

Volumes are voxel counts times the voxel volume from the mask's spacing (``volume_pred_ml``, ``volume_ref_ml`` of the
per-case rows). For each label, over the cases where the label is present in at least one mask: differences
``d = predicted - reference`` (ml), bias = mean(d), SD of d (n - 1 denominator), limits of agreement
``bias -/+ 1.96 SD`` (Bland and Altman 1986). CIs of all four come from the cluster bootstrap (patients resampled).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medeff.evaluation.bootstrap import NON_NEGATIVE, cluster_bootstrap, interval_method
from medeff.evaluation.tables import metric_record

__all__ = ["Z_LOA", "volume_agreement", "weighted_bland_altman"]

Z_LOA = 1.959963984540054  #: normal quantile of 95% limits of agreement
_ROWS = (("bias_ml", "Bias (mean of predicted - reference volume)"),
         ("sd_ml", "SD of the volume differences"),
         ("loa_low_ml", "Lower 95% limit of agreement (bias - 1.96 SD)"),
         ("loa_high_ml", "Upper 95% limit of agreement (bias + 1.96 SD)"))


def weighted_bland_altman(diff: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bias, SD, lower and upper limit of agreement per row of case weights: ``(4, B)``."""
    w = np.atleast_2d(np.asarray(weights, float))
    d = np.asarray(diff, float)
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        bias = (w @ d) / total
        var = (w * (d[None, :] - bias[:, None]) ** 2).sum(axis=1) / (total - 1.0)
    sd = np.sqrt(np.where(total > 1, var, np.nan))
    return np.vstack([bias, sd, bias - Z_LOA * sd, bias + Z_LOA * sd])


def volume_agreement(table: pd.DataFrame, labels, label_names: dict, groups_by_case: dict, *,
                     n_resamples: int = 1000, confidence: float = 0.95, method: str = "percentile",
                     seed: int = 0) -> list[dict]:
    """Per label: n, the Bland-Altman records (bias, SD, limits of agreement in ml, with CIs) and the mean volume.

    Args:
        table: per case and label rows with ``case``, ``label``, ``volume_pred_ml``, ``volume_ref_ml``.
        labels: label values, in report order.
        label_names: value -> display name.
        groups_by_case: case -> patient/group id (clusters of the bootstrap).
    """
    out = []
    for lab in labels:
        sub = table[table["label"] == lab]
        pred = sub["volume_pred_ml"].to_numpy(float)
        ref = sub["volume_ref_ml"].to_numpy(float)
        keep = np.isfinite(pred) & np.isfinite(ref) & ((pred > 0) | (ref > 0))
        diff = (pred - ref)[keep]
        groups = np.asarray([groups_by_case[c] for c in sub["case"].to_numpy()[keep]], dtype=object).astype(str)
        n = int(keep.sum())
        recs = []
        if n:
            boot = cluster_bootstrap(lambda w, d=diff: weighted_bland_altman(d, w), groups, n_resamples=n_resamples,
                                     confidence=confidence, method=method, seed=seed,
                                     bounds=[None, NON_NEGATIVE, None, None])
            for i, (key, text) in enumerate(_ROWS):
                ci_text, extra = interval_method(boot, i)
                recs.append(metric_record(key, text, boot["estimate"][i], boot["low"][i], boot["high"][i], ci_text,
                                          n=n, unit="ml", digits=2, **extra))
        else:
            recs = [metric_record(key, text, None, n=0, unit="ml", digits=2) for key, text in _ROWS]
        out.append({"label": int(lab), "name": label_names.get(lab, f"label {lab}"), "n": n,
                    "n_excluded_both_empty": int((~keep).sum()),
                    "mean_reference_ml": float(ref[keep].mean()) if n else None,
                    "metrics": recs})
    return out
