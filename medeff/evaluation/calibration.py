"""Calibration of predicted probabilities: Brier score, expected calibration error (ECE), reliability table.

ECE = sum over bins b of (n_b / N) * |mean predicted probability in b - observed fraction positive in b|.
Bins are ``n_bins`` equal-width intervals of [0, 1] (``strategy="uniform"``; the last bin includes 1.0) or
equal-count quantile bins (``strategy="quantile"``); empty bins contribute nothing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bin_index", "weighted_brier", "weighted_ece", "reliability_table"]


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
