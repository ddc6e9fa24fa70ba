"""Triage listing for binary classification when ROC analysis is impossible: unlabelled cases, or a reference with
one class only (e.g. a series of biopsy-proven malignant tumours).

The result keeps the contract of :func:`medeff.evaluation.evaluate_classification` (``headline``,
``operating_points``, ``per_case``) with ``triage_only: true`` and a ``statement`` saying what cannot be estimated
and why. What can be estimated is reported: at the configured threshold the number of cases flagged, and, with a
one-class reference, the sensitivity (all positive) or the specificity (all negative) with a cluster-bootstrap CI.
ROC AUC, PR AUC, calibration, Youden's J and the sensitivity-target points need both classes and are listed as not
estimable, never computed.
"""

from __future__ import annotations

import numpy as np

from medeff.evaluation.bootstrap import UNIT, cluster_bootstrap, interval_method
from medeff.evaluation.operating_points import METRIC_LABELS, counts_at, metrics_from_counts
from medeff.evaluation.tables import metric_record

__all__ = ["triage_results", "triage_statement"]

_KEYS = list(METRIC_LABELS)


def triage_statement(n_pos: int | None, n_neg: int | None, unit: str) -> str:
    """The sentence a report shows when ROC analysis is not possible."""
    if n_pos is None:
        return (f"No reference labels were given: the {unit}s are listed with their scores and triage decisions at "
                "the configured threshold. Sensitivity, specificity, ROC AUC and calibration cannot be estimated "
                "without references.")
    cls, other = ("positive", "negative") if n_neg == 0 else ("negative", "positive")
    est = "sensitivity" if n_neg == 0 else "specificity"
    return (f"The reference holds one class only ({n_pos} positive, {n_neg} negative {unit}s): ROC AUC, PR AUC, "
            f"calibration, Youden's J and the sensitivity-target operating points need {cls} and {other} {unit}s and "
            f"are not estimable. Reported: each {unit}'s score and triage decision at the configured threshold, and "
            f"the {est} at that threshold.")


def triage_results(scores: np.ndarray, y: np.ndarray | None, groups: np.ndarray, threshold: float, *,
                   unit: str, n_resamples: int, confidence: float, method: str, seed: int,
                   model_name: str = "Model") -> dict:
    """Results of a triage-only evaluation (see module docstring).

    Args:
        scores: score per case (probability of the positive class).
        y: boolean reference per case, or None when unlabelled.
        groups: patient/group per case (cluster bootstrap).
        threshold: the configured threshold (flag when score >= threshold).
        unit: what a case is ("nodule", "case" ...).
        n_resamples, confidence, method, seed: cluster bootstrap settings.
        model_name: name shown in the report.

    Returns:
        The model part of a results dict (``triage_only``, ``statement``, ``headline``, ``operating_points``).
    """
    n = len(scores)
    flagged = int(np.sum(scores >= threshold))
    n_pos = None if y is None else int(y.sum())
    n_neg = None if y is None else int((~y).sum())
    headline = [metric_record("flagged", f"{unit.capitalize()}s flagged at the configured threshold ({threshold:g})",
                              flagged, n=n),
                metric_record("auc", "ROC AUC (area under the ROC curve)", None, method="not estimable", n=n)]
    op = {"name": "configured", "label": f"Configured threshold ({threshold:g})", "threshold": float(threshold),
          "rule": "the threshold set in the configuration", "flagged": flagged}
    if y is not None:
        yy = np.asarray(y, bool)
        c = counts_at(scores, yy, threshold)
        m = metrics_from_counts(c)

        def stat(w):
            mm = metrics_from_counts(counts_at(scores, yy, threshold, w))
            return np.vstack([np.asarray(mm[k], float) for k in _KEYS])

        boot = cluster_bootstrap(stat, groups, n_resamples=n_resamples, confidence=confidence, method=method,
                                 seed=seed, bounds=UNIT)
        mets = []
        for i, k in enumerate(_KEYS):
            value = m[k]
            ok = value is not None and np.isfinite(float(value))
            text, extra = interval_method(boot, i) if ok else ("not estimable", {})
            mets.append(metric_record(k, METRIC_LABELS[k], float(value) if ok else None,
                                      boot["low"][i] if ok else None, boot["high"][i] if ok else None,
                                      text, n=n, **extra))
        op.update(confusion=c, metrics=mets)
        key = "sensitivity" if n_neg == 0 else "specificity"
        headline.insert(1, next(r for r in mets if r["key"] == key))
    else:
        op.update(confusion={"flagged": flagged, "routine": n - flagged},
                  metrics=[metric_record(k, METRIC_LABELS[k], None, method="not estimable", n=n) for k in _KEYS])
    return {"model_name": model_name, "triage_only": True, "statement": triage_statement(n_pos, n_neg, unit),
            "probabilities": bool(np.all((scores >= 0) & (scores <= 1))), "headline": headline,
            "operating_points": [op], "calibration": None}
