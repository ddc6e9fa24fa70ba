"""Operating points: threshold selection and the confusion-matrix metrics at a threshold.

A case is called positive when ``score >= threshold``. Candidate thresholds are the distinct observed scores.

* Youden's J: the threshold maximising ``sensitivity + specificity - 1``; among ties the highest threshold.
* Target sensitivity s: the *highest* threshold whose sensitivity is ``>= s`` (flags as few cases as possible while
  meeting the target on these data).
"""

from __future__ import annotations

import numpy as np

__all__ = ["METRIC_LABELS", "counts_at", "metrics_from_counts", "youden_threshold", "threshold_for_sensitivity"]

# plain-language labels for a clinician, in display order
METRIC_LABELS: dict[str, str] = {
    "sensitivity": "Sensitivity (true-positive rate)",
    "specificity": "Specificity (true-negative rate)",
    "ppv": "Positive predictive value (precision)",
    "npv": "Negative predictive value",
    "f1": "F1 score",
    "balanced_accuracy": "Balanced accuracy",
    "accuracy": "Accuracy",
}


def counts_at(scores: np.ndarray, y: np.ndarray, threshold: float, weights: np.ndarray | None = None) -> dict:
    """Weighted confusion counts (tp, fp, tn, fn) at ``threshold``; ``weights`` (B, n) gives arrays of length B."""
    s = np.asarray(scores, float)
    yb = np.asarray(y, bool)
    pred = s >= threshold
    w = np.ones((1, len(s))) if weights is None else np.atleast_2d(weights)
    out = {
        "tp": w @ (pred & yb).astype(float),
        "fp": w @ (pred & ~yb).astype(float),
        "tn": w @ (~pred & ~yb).astype(float),
        "fn": w @ (~pred & yb).astype(float),
    }
    if weights is None:
        out = {k: int(round(float(v[0]))) for k, v in out.items()}
    return out


def _ratio(a, b):
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def metrics_from_counts(c: dict) -> dict:
    """Sensitivity, specificity, PPV, NPV, F1, balanced accuracy and accuracy from confusion counts.

    Undefined ratios (zero denominator) are NaN.
    """
    tp, fp, tn, fn = (np.asarray(c[k], float) for k in ("tp", "fp", "tn", "fn"))
    sens = _ratio(tp, tp + fn)
    spec = _ratio(tn, tn + fp)
    out = {
        "sensitivity": sens,
        "specificity": spec,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (sens + spec) / 2.0,
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
    }
    return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in out.items()}


def _sweep(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with sensitivity and specificity of ``score >= t``."""
    s = np.asarray(scores, float)
    yb = np.asarray(y, bool)
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    last = np.r_[ss[1:] != ss[:-1], True]  # last index of each run of equal scores
    tp = np.cumsum(yb[order])[last]
    fp = np.cumsum(~yb[order])[last]
    m, n = yb.sum(), (~yb).sum()
    return ss[last], tp / max(m, 1), 1.0 - fp / max(n, 1)


def youden_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (highest threshold among ties)."""
    t, sens, spec = _sweep(scores, y)
    j = sens + spec - 1.0
    return float(t[int(np.argmax(j >= j.max() - 1e-12))])


def threshold_for_sensitivity(scores: np.ndarray, y: np.ndarray, target: float) -> float:
    """Highest threshold whose sensitivity is at least ``target`` (0-1).

    Raises:
        ValueError: there are no positive cases.
    """
    if not np.asarray(y, bool).any():
        raise ValueError("a target sensitivity needs positive cases.")
    t, sens, _ = _sweep(scores, y)
    ok = np.flatnonzero(sens >= target - 1e-12)
    return float(t[ok[0]])
