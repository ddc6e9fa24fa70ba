"""Calibration of predicted probabilities: Brier score, expected calibration error (ECE), reliability table.

ECE = sum over bins b of (n_b / N) * |mean predicted probability in b - observed fraction positive in b|.
Bins are ``n_bins`` equal-width intervals of [0, 1] (``strategy="uniform"``; the last bin includes 1.0) or
equal-count quantile bins (``strategy="quantile"``); empty bins contribute nothing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bin_index", "weighted_brier", "weighted_ece", "reliability_table", "logit", "weighted_recalibration", "EPS"]


def bin_index(prob: np.ndarray, n_bins: int = 10, strategy: str = "uniform") -> tuple[np.ndarray, np.ndarray]:
    """Assign each probability to a bin; returns (bin index per case, bin edges)."""
    p = np.asarray(prob, float)
    if strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
        edges[0], edges[-1] = 0.0, 1.0
    elif strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        raise ValueError(f"unknown binning strategy {strategy!r}; use 'uniform' or 'quantile'.")
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    return idx, edges


def weighted_brier(prob: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Brier score mean((p - y)^2) per row of case weights (B, n)."""
    w = np.atleast_2d(weights)
    sq = (np.asarray(prob, float) - np.asarray(y, float)) ** 2
    return (w @ sq) / w.sum(axis=1)


def weighted_ece(prob: np.ndarray, y: np.ndarray, weights: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Expected calibration error per row of case weights, with fixed bin assignment ``bins``."""
    w = np.atleast_2d(weights)
    p = np.asarray(prob, float)
    yf = np.asarray(y, float)
    onehot = np.zeros((len(p), n_bins))
    onehot[np.arange(len(p)), bins] = 1.0
    nb = w @ onehot
    sp = w @ (onehot * p[:, None])
    sy = w @ (onehot * yf[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(nb > 0, np.abs(sp - sy) / np.where(nb > 0, nb, 1.0), 0.0)
    return (nb * gap).sum(axis=1) / nb.sum(axis=1)


def reliability_table(prob: np.ndarray, y: np.ndarray, n_bins: int = 10, strategy: str = "uniform") -> list[dict]:
    """Per bin: edges, n, mean predicted probability and observed fraction of positives."""
    idx, edges = bin_index(prob, n_bins, strategy)
    p = np.asarray(prob, float)
    yf = np.asarray(y, float)
    rows = []
    for b in range(len(edges) - 1):
        sel = idx == b
        n = int(sel.sum())
        rows.append({"bin_low": float(edges[b]), "bin_high": float(edges[b + 1]), "n": n,
                     "mean_predicted": float(p[sel].mean()) if n else None,
                     "observed_fraction": float(yf[sel].mean()) if n else None})
    return rows


#: probabilities are clipped to [EPS, 1 - EPS] before the logit (a probability of exactly 0 or 1 has no logit)
EPS = 1e-6


def logit(prob: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped to [EPS, 1 - EPS]."""
    p = np.clip(np.asarray(prob, float), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def weighted_recalibration(prob: np.ndarray, y: np.ndarray, weights: np.ndarray, *, max_iter: int = 50,
                           tol: float = 1e-10) -> np.ndarray:
    """Calibration slope and calibration-in-the-large per row of case weights, by unpenalised maximum likelihood.

    Slope ``b``: logistic regression ``logit P(y=1) = a + b * logit(p)`` (Cox 1958). Calibration-in-the-large
    ``a0``: ``logit P(y=1) = a0 + logit(p)``, the slope fixed at 1 (an offset). Both are fitted by Newton-Raphson for
    every row of ``weights`` at once (integer bootstrap weights are frequency weights), without any penalty.

    Returns:
        ``(2, B)``: row 0 the slope, row 1 the intercept (calibration-in-the-large); NaN where the fit does not
        converge (e.g. complete separation, or one outcome class only).
    """
    w = np.atleast_2d(np.asarray(weights, float))
    x = logit(prob)
    yf = np.asarray(y, float)
    b_count = w.shape[0]
    # joint fit (a, b): start at the identity recalibration
    a = np.zeros(b_count)
    b = np.ones(b_count)
    ok = np.zeros(b_count, bool)
    for _ in range(max_iter):
        mu = _sigmoid(a[:, None] + b[:, None] * x[None, :])
        r = w * (yf[None, :] - mu)
        v = w * mu * (1.0 - mu)
        g0, g1 = r.sum(1), r @ x
        h00, h01, h11 = v.sum(1), v @ x, v @ (x * x)
        det = h00 * h11 - h01 * h01
        with np.errstate(invalid="ignore", divide="ignore"):
            da = (h11 * g0 - h01 * g1) / det
            db = (h00 * g1 - h01 * g0) / det
        a, b = a + da, b + db
        ok = np.isfinite(a) & np.isfinite(b) & (np.abs(da) + np.abs(db) < tol * (1.0 + np.abs(a) + np.abs(b)))
        if ok.all():
            break
    slope = np.where(ok & (np.abs(b) < 1e6), b, np.nan)
    # calibration-in-the-large: one parameter with offset logit(p)
    a0 = np.zeros(b_count)
    ok0 = np.zeros(b_count, bool)
    for _ in range(max_iter):
        mu = _sigmoid(a0[:, None] + x[None, :])
        g = (w * (yf[None, :] - mu)).sum(1)
        h = (w * mu * (1.0 - mu)).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            step = g / h
        a0 = a0 + step
        ok0 = np.isfinite(a0) & (np.abs(step) < tol * (1.0 + np.abs(a0)))
        if ok0.all():
            break
    intercept = np.where(ok0 & (np.abs(a0) < 1e6), a0, np.nan)
    return np.vstack([slope, intercept])
