"""ROC AUC with DeLong's variance, the paired DeLong test, and weighted (bootstrap-ready) AUC / average precision.

DeLong's variance is computed with the fast algorithm of Sun and Xu (2014): midranks of the positive scores,
the negative scores and the pooled scores give the structural components

    V10_i = (T_Z[i] - T_X[i]) / n          for each of the m positives,
    V01_j = 1 - (T_Z[m + j] - T_Y[j]) / m  for each of the n negatives,

and ``AUC = mean(V10) = mean(V01)``, ``Var(AUC) = S10 / m + S01 / n`` with S10, S01 the sample (co)variances of
the components (DeLong, DeLong and Clarke-Pearson 1988).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "midrank",
    "DelongResult",
    "delong",
    "delong_paired_test",
    "weighted_auc",
    "weighted_average_precision",
    "weighted_roc_at",
]


def midrank(x: np.ndarray) -> np.ndarray:
    """Return 1-based midranks of ``x`` (tied values share the mean of their ranks).

    Args:
        x: 1-D array of scores.

    Returns:
        Array of the same length holding float ranks.
    """
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(xs)
    ranks = np.empty(n, dtype=float)
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]
    mids = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks[order] = np.repeat(mids, ends - starts)
    return ranks


@dataclass(frozen=True)
class DelongResult:
    """AUCs of one or more score sets on the same cases, with DeLong's covariance matrix.

    Attributes:
        auc: (k,) AUC of each score set.
        cov: (k, k) covariance matrix of the AUC estimates.
        n_pos: number of positive cases.
        n_neg: number of negative cases.
    """

    auc: np.ndarray
    cov: np.ndarray
    n_pos: int
    n_neg: int

    def ci(self, index: int = 0, confidence: float = 0.95) -> tuple[float, float]:
        """Normal (Wald) interval ``AUC +- z * SE`` clipped to [0, 1]."""
        z = stats.norm.ppf(0.5 + confidence / 2.0)
        se = float(np.sqrt(max(self.cov[index, index], 0.0)))
        a = float(self.auc[index])
        return max(0.0, a - z * se), min(1.0, a + z * se)


def delong(y_true: np.ndarray, scores: np.ndarray) -> DelongResult:
    """AUC and DeLong covariance for one or more score sets (fast midrank algorithm).

    Args:
        y_true: (n,) binary labels (1 = positive).
        scores: (n,) or (k, n) scores, higher meaning more likely positive.

    Returns:
        :class:`DelongResult`.

    Raises:
        ValueError: fewer than one positive or one negative case.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if s.shape[1] != y.shape[0]:
        raise ValueError(f"scores have {s.shape[1]} cases but labels have {y.shape[0]}.")
    m, n = int(y.sum()), int((~y).sum())
    if m < 1 or n < 1:
        raise ValueError(f"AUC needs positive and negative cases (got {m} positive, {n} negative).")
    k = s.shape[0]
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    auc = np.empty(k)
    for r in range(k):
        x, yy = s[r, y], s[r, ~y]
        tx, ty, tz = midrank(x), midrank(yy), midrank(np.r_[x, yy])
        auc[r] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((k, k))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((k, k))
    return DelongResult(auc=auc, cov=s10 / m + s01 / n, n_pos=m, n_neg=n)


def delong_paired_test(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                       confidence: float = 0.95) -> dict:
    """Paired DeLong test of H0: AUC_a == AUC_b for two models scored on the same cases.

    Returns:
        dict with ``auc_a``, ``auc_b``, ``difference`` (a - b), its ``ci_low``/``ci_high``, ``z`` and two-sided ``p``.
        Identical score sets give ``z = 0`` and ``p = 1``.
    """
    res = delong(y_true, np.vstack([scores_a, scores_b]))
    diff = float(res.auc[0] - res.auc[1])
    var = float(res.cov[0, 0] + res.cov[1, 1] - 2.0 * res.cov[0, 1])
    if var <= 1e-15:
        z, p, se = 0.0 if abs(diff) < 1e-15 else float(np.sign(diff) * np.inf), 1.0 if abs(diff) < 1e-15 else 0.0, 0.0
    else:
        se = float(np.sqrt(var))
        z = diff / se
        p = float(2.0 * stats.norm.sf(abs(z)))
    zq = stats.norm.ppf(0.5 + confidence / 2.0)
    return {"auc_a": float(res.auc[0]), "auc_b": float(res.auc[1]), "difference": diff,
            "ci_low": float(diff - zq * se), "ci_high": float(diff + zq * se), "z": float(z), "p": float(p),
            "n_pos": res.n_pos, "n_neg": res.n_neg}


def _grouped(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum weights of positives and negatives per unique score (ascending). weights: (B, n)."""
    order = np.argsort(scores, kind="mergesort")
    ss = scores[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    w = weights[:, order]
    yp = y[order].astype(float)
    pos = np.add.reduceat(w * yp, starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - yp), starts, axis=1)
    return ss[starts], pos, neg


def weighted_auc(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count one half) for each row of case weights, e.g. bootstrap multiplicities.

    Args:
        scores: (n,) scores.
        y: (n,) binary labels.
        weights: (B, n) non-negative case weights.

    Returns:
        (B,) AUC per weight row; NaN where a row has no positive or no negative weight.
    """
    _, pos, neg = _grouped(np.asarray(scores, float), np.asarray(y, bool), np.atleast_2d(weights))
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_average_precision(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over decreasing thresholds (as scikit-learn), per weight row.

    Returns:
        (B,) average precision; NaN where a row has no positive weight.
    """
    _, pos, neg = _grouped(np.asarray(scores, float), np.asarray(y, bool), np.atleast_2d(weights))
    tp = np.cumsum(pos[:, ::-1], axis=1)
    fp = np.cumsum(neg[:, ::-1], axis=1)
    total = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 1.0)
        recall = tp / total
        d_recall = np.diff(np.c_[np.zeros(len(tp)), recall], axis=1)
        ap = (d_recall * precision).sum(axis=1)
    return np.where(total[:, 0] > 0, ap, np.nan)


def weighted_roc_at(scores: np.ndarray, y: np.ndarray, weights: np.ndarray, fpr_grid: np.ndarray) -> np.ndarray:
    """True-positive rate at each false-positive rate of ``fpr_grid`` (ROC step curve, linearly interpolated).

    Returns:
        (B, len(fpr_grid)) TPR per weight row (NaN where a row lacks positives or negatives).
    """
    _, pos, neg = _grouped(np.asarray(scores, float), np.asarray(y, bool), np.atleast_2d(weights))
    tp = np.cumsum(pos[:, ::-1], axis=1)
    fp = np.cumsum(neg[:, ::-1], axis=1)
    out = np.full((tp.shape[0], len(fpr_grid)), np.nan)
    for b in range(tp.shape[0]):
        if tp[b, -1] <= 0 or fp[b, -1] <= 0:
            continue
        tpr = np.r_[0.0, tp[b] / tp[b, -1]]
        fpr = np.r_[0.0, fp[b] / fp[b, -1]]
        out[b] = np.interp(fpr_grid, fpr, tpr)
    return out
