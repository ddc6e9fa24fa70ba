"""Cluster bootstrap confidence intervals through :func:`scipy.stats.bootstrap`.

Groups (patients) are resampled with replacement, never single rows: a resample is expressed as integer case
weights (how often each row's group was drawn), so every statistic is written once as a function of a weight matrix
``(B, n_rows) -> (k, B)`` and all B resamples are evaluated in a few vectorised array operations.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats

__all__ = ["cluster_bootstrap"]

_HAS_RNG = "rng" in inspect.signature(stats.bootstrap).parameters


def cluster_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    groups: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
) -> dict:
    """Point estimates and cluster-bootstrap CIs of a vector-valued statistic of case weights.

    Args:
        statistic: maps a weight matrix ``(B, n_rows)`` to an array ``(k, B)``; may return NaN where undefined.
        groups: (n_rows,) cluster label per row (patient id); rows of a group are resampled together.
        n_resamples: number of bootstrap resamples.
        confidence: confidence level (0.95 gives 95% intervals).
        method: ``"percentile"``, ``"basic"`` or ``"BCa"`` (passed to scipy).
        seed: seed of the resampling generator.

    Returns:
        dict with ``estimate``, ``low``, ``high`` (arrays of length k) and ``n_invalid`` (resamples where a component
        was NaN; those are dropped and the percentile interval of the valid ones is reported).
    """
    groups = np.asarray(groups)
    _, inv = np.unique(groups, return_inverse=True)
    n_groups = int(inv.max()) + 1 if len(inv) else 0
    n_rows = len(inv)
    estimate = np.asarray(statistic(np.ones((1, n_rows))), float)[:, 0]
    k = len(estimate)
    nan = np.full(k, np.nan)
    if n_groups < 2 or n_resamples < 2:
        return {"estimate": estimate, "low": nan, "high": nan, "n_invalid": np.zeros(k, int)}

    def _stat(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.asarray(idx).astype(np.int64)
        flat = idx.reshape(-1, idx.shape[-1])
        b = flat.shape[0]
        counts = np.bincount((flat + n_groups * np.arange(b)[:, None]).ravel(), minlength=b * n_groups)
        weights = counts.reshape(b, n_groups)[:, inv].astype(float)
        out = np.asarray(statistic(weights), float)
        return out.reshape((k,) + idx.shape[:-1])

    kwargs = {"rng": np.random.default_rng(seed)} if _HAS_RNG else {"random_state": np.random.default_rng(seed)}
    batch = max(1, int(2e7 // max(n_rows, 1)))
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        res = stats.bootstrap((np.arange(n_groups),), _stat, vectorized=True, n_resamples=n_resamples,
                              confidence_level=confidence, method=method, batch=batch, **kwargs)
    low = np.atleast_1d(np.asarray(res.confidence_interval.low, float)).copy()
    high = np.atleast_1d(np.asarray(res.confidence_interval.high, float)).copy()
    dist = np.asarray(res.bootstrap_distribution, float).reshape(k, -1)
    n_invalid = np.isnan(dist).sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    for i in range(k):
        if (np.isnan(low[i]) or np.isnan(high[i]) or n_invalid[i]) and np.isfinite(estimate[i]):
            valid = dist[i][~np.isnan(dist[i])]
            if len(valid) >= 2:
                low[i], high[i] = np.quantile(valid, [alpha, 1.0 - alpha])
    return {"estimate": estimate, "low": low, "high": high, "n_invalid": n_invalid}
