"""Decision-curve analysis of a binary classifier's probabilities (Vickers and Elkin 2006).

At a threshold probability ``pt`` (treat, biopsy or recall when the predicted probability is >= ``pt``), the net
benefit of a strategy is

    NB(pt) = TP / n - FP / n * pt / (1 - pt)

true positives gained per case, with every false positive charged the odds ``pt / (1 - pt)`` of the threshold (the
harm of an unneeded intervention relative to the benefit of a needed one, as the threshold expresses it). Treating
everyone gives ``prevalence - (1 - prevalence) * pt / (1 - pt)``; treating no one gives 0. Intervals come from the
cluster bootstrap of :mod:`medeff.evaluation.bootstrap` (patients resampled, thresholds fixed).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medeff.errors import ConfigError
from medeff.evaluation.bootstrap import cluster_bootstrap, interval_method

__all__ = ["DEFAULT_RANGE", "threshold_grid", "weighted_net_benefit", "decision_curve"]

#: threshold range when the configuration gives none
DEFAULT_RANGE = {"threshold_min": 0.01, "threshold_max": 0.5, "threshold_step": 0.01}


def threshold_grid(spec: Mapping | None) -> np.ndarray:
    """Threshold probabilities from ``{threshold_min, threshold_max, threshold_step}`` (both ends included).

    Raises:
        ConfigError: a bound outside (0, 1), min above max, or a step that is not positive.
    """
    cfg = {**DEFAULT_RANGE, **{k: v for k, v in dict(spec or {}).items() if v is not None}}
    unknown = sorted(set(cfg) - set(DEFAULT_RANGE) - {"enabled"})
    if unknown:
        raise ConfigError(f"classification.decision_curve: unknown key(s) {unknown}.",
                          hint=f"use {sorted(DEFAULT_RANGE)} (and enabled).")
    try:
        lo, hi, step = (float(cfg[k]) for k in ("threshold_min", "threshold_max", "threshold_step"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"classification.decision_curve: threshold_min/max/step must be numbers ({exc}).",
                          hint="e.g. classification.decision_curve.threshold_max=0.3") from exc
    if not (0.0 < lo <= hi < 1.0):
        raise ConfigError(f"classification.decision_curve: thresholds {lo:g} to {hi:g} are not inside (0, 1) with "
                          "threshold_min <= threshold_max.",
                          hint="give threshold probabilities strictly between 0 and 1, e.g. 0.01 to 0.5.")
    if not step > 0:
        raise ConfigError(f"classification.decision_curve.threshold_step is {step:g}; it must be positive.",
                          hint="e.g. classification.decision_curve.threshold_step=0.01")
    n = int(np.floor((hi - lo) / step + 1e-9)) + 1
    if n > 1000:
        raise ConfigError(f"classification.decision_curve: {n} thresholds from {lo:g} to {hi:g} in steps of {step:g}.",
                          hint="use a step giving at most 1000 thresholds (e.g. 0.01).")
    return np.round(lo + step * np.arange(n), 10)


def weighted_net_benefit(prob: np.ndarray, y: np.ndarray, weights: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit of the model and of treating everyone, per row of case weights.

    Returns:
        ``(2 * T, B)``: rows ``0..T-1`` the model at each threshold, rows ``T..2T-1`` treat-all.
    """
    w = np.atleast_2d(np.asarray(weights, float))
    p = np.asarray(prob, float)
    yf = np.asarray(y, float)
    t = np.asarray(thresholds, float)
    total = w.sum(axis=1)  # (B,)
    pos = (p[None, :] >= t[:, None]).astype(float)  # (T, n)
    tp = (pos * yf) @ w.T  # (T, B)
    fp = (pos * (1.0 - yf)) @ w.T
    odds = (t / (1.0 - t))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        model = tp / total - fp / total * odds
        prevalence = (w @ yf) / total  # (B,)
        treat_all = prevalence[None, :] - (1.0 - prevalence[None, :]) * odds
    return np.vstack([model, treat_all])


def decision_curve(prob: np.ndarray, y: np.ndarray, groups: np.ndarray, spec: Mapping | None = None, *,
                   n_resamples: int = 1000, confidence: float = 0.95, method: str = "percentile",
                   seed: int = 0) -> dict:
    """Net benefit of the model and of treat-all / treat-none over the configured thresholds, with CIs.

    Returns:
        ``{"settings": {...}, "points": [{threshold, net_benefit, net_benefit_ci_low, net_benefit_ci_high,
        net_benefit_treat_all, net_benefit_treat_all_ci_low, ..., net_benefit_treat_none}], "ci_method": ...}``.
    """
    t = threshold_grid(spec)
    boot = cluster_bootstrap(lambda w: weighted_net_benefit(prob, y, w, t), groups, n_resamples=n_resamples,
                             confidence=confidence, method=method, seed=seed, bounds=None)
    k = len(t)
    points = []
    methods = set()
    for i, thr in enumerate(t):
        text, extra = interval_method(boot, i)
        methods.add(text)
        points.append({"threshold": float(thr),
                       "net_benefit": float(boot["estimate"][i]),
                       "net_benefit_ci_low": _num(boot["low"][i]), "net_benefit_ci_high": _num(boot["high"][i]),
                       "net_benefit_treat_all": float(boot["estimate"][k + i]),
                       "net_benefit_treat_all_ci_low": _num(boot["low"][k + i]),
                       "net_benefit_treat_all_ci_high": _num(boot["high"][k + i]),
                       "net_benefit_treat_none": 0.0,
                       "ci_method_used": extra["ci_method_used"]})
    lo, hi = float(t[0]), float(t[-1])
    step = float(t[1] - t[0]) if k > 1 else 0.0
    return {"settings": {"threshold_min": lo, "threshold_max": hi, "threshold_step": round(step, 10),
                         "rule": "treat when the predicted probability >= threshold"},
            "ci_method": "; ".join(sorted(methods)), "points": points}


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None
