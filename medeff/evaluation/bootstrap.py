"""Cluster bootstrap confidence intervals through :func:`scipy.stats.bootstrap`.

Groups (patients) are resampled with replacement, never single rows: a resample is expressed as integer case
weights (how often each row's group was drawn), so every statistic is written once as a function of a weight matrix
``(B, n_rows) -> (k, B)`` and all B resamples are evaluated in a few vectorised array operations.

Bounded measures (AUC, sensitivity, Dice ...) pass their range as ``bounds``: an interval end outside it (the
``basic`` method reflects the bootstrap distribution around the estimate and can give 1.05) is clipped to the range
and the clipping is recorded. The method actually used for each interval is recorded too: where BCa or basic is
undefined (resamples in which the statistic is NaN, e.g. no positive case drawn), the interval is the percentile
interval of the valid resamples, and ``method_used`` says so.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

__all__ = ["cluster_bootstrap", "interval_method", "UNIT", "NON_NEGATIVE"]

UNIT = (0.0, 1.0)  #: bounds of proportions, AUC, Dice ...
NON_NEGATIVE = (0.0, np.inf)  #: bounds of distances and volumes

_HAS_RNG = "rng" in inspect.signature(stats.bootstrap).parameters


def cluster_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    groups: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
    bounds: tuple[float, float] | Sequence[tuple[float, float] | None] | None = None,
) -> dict:
    """Point estimates and cluster-bootstrap CIs of a vector-valued statistic of case weights.

    Args:
        statistic: maps a weight matrix ``(B, n_rows)`` to an array ``(k, B)``; may return NaN where undefined.
        groups: (n_rows,) cluster label per row (patient id); rows of a group are resampled together.
        n_resamples: number of bootstrap resamples.
        confidence: confidence level (0.95 gives 95% intervals).
        method: ``"percentile"``, ``"basic"`` or ``"BCa"`` (passed to scipy).
        seed: seed of the resampling generator.
        bounds: range of the statistic, one ``(low, high)`` for all components or one per component (None: none);
            interval ends outside it are clipped to it.

    Returns:
        dict with ``estimate``, ``low``, ``high`` (arrays of length k), ``n_invalid`` (resamples where a component
        was NaN; those are dropped and the percentile interval of the valid ones is reported), ``method_used`` (the
        method of each interval, e.g. ``"percentile (BCa undefined: 12 of 1000 resamples NaN)"``), ``clipped``
        (whether an end was clipped to ``bounds``) and ``n_resamples``.
    """
    groups = np.asarray(groups)
    _, inv = np.unique(groups, return_inverse=True)
    n_groups = int(inv.max()) + 1 if len(inv) else 0
    n_rows = len(inv)
    estimate = np.asarray(statistic(np.ones((1, n_rows))), float)[:, 0]
    k = len(estimate)
    nan = np.full(k, np.nan)
    if n_groups < 2 or n_resamples < 2:
        return {"estimate": estimate, "low": nan, "high": nan, "n_invalid": np.zeros(k, int),
                "method_used": ["not estimable (fewer than 2 groups)"] * k, "clipped": np.zeros(k, bool),
                "bounds": _per_component(bounds, k), "n_resamples": int(n_resamples)}

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
    used = [method] * k
    for i in range(k):
        if (np.isnan(low[i]) or np.isnan(high[i]) or n_invalid[i]) and np.isfinite(estimate[i]):
            valid = dist[i][~np.isnan(dist[i])]
            why = (f"{int(n_invalid[i])} of {dist.shape[1]} resamples NaN" if n_invalid[i]
                   else "degenerate bootstrap distribution")
            if len(valid) >= 2:
                low[i], high[i] = np.quantile(valid, [alpha, 1.0 - alpha])
                used[i] = (f"percentile of the valid resamples ({why})" if method == "percentile"
                           else f"percentile ({method} undefined: {why})")
            else:
                used[i] = f"not estimable ({why})"
        elif not np.isfinite(estimate[i]):
            used[i] = "not estimable"
    clipped = np.zeros(k, bool)
    per = _per_component(bounds, k)
    for i, b in enumerate(per):
        if b is None:
            continue
        lo_b, hi_b = float(b[0]), float(b[1])
        with np.errstate(invalid="ignore"):
            out = (low[i] < lo_b) or (high[i] > hi_b) or (low[i] > hi_b) or (high[i] < lo_b)
        if out:
            low[i], high[i] = np.clip(low[i], lo_b, hi_b), np.clip(high[i], lo_b, hi_b)
            clipped[i] = True
    return {"estimate": estimate, "low": low, "high": high, "n_invalid": n_invalid, "method_used": used,
            "clipped": clipped, "bounds": per, "n_resamples": int(n_resamples)}


def _per_component(bounds, k: int) -> list:
    if bounds is None:
        return [None] * k
    if len(bounds) == 2 and all(b is None or np.isscalar(b) for b in bounds):
        return [tuple(bounds)] * k
    if len(bounds) != k:
        raise ValueError(f"bounds has {len(bounds)} entries for a statistic of {k} components")
    return list(bounds)


def interval_method(boot: dict, i: int) -> tuple[str, dict]:
    """The ``ci_method`` text of interval ``i`` of a :func:`cluster_bootstrap` result and the extra record fields
    ``ci_method_used`` (the method actually used) and ``ci_clipped`` (an end was clipped to the measure's range)."""
    used = boot["method_used"][i]
    text = f"cluster bootstrap ({used}, {boot['n_resamples']} resamples)"
    clipped = bool(boot["clipped"][i])
    bounds = boot["bounds"][i]
    if clipped and bounds is not None:
        text += f"; clipped to [{_num(bounds[0])}, {_num(bounds[1])}]"
    return text, {"ci_method_used": used, "ci_clipped": clipped}


def _num(x: float) -> str:
    return "inf" if np.isinf(x) else f"{x:g}"
