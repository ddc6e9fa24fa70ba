"""Split protocols side by side: the same models evaluated on test sets drawn by different splits.

Input is one long table of test predictions: ``file, protocol, model, label, group`` and one probability column per
class. For every (protocol, model): accuracy, balanced accuracy, per-class sensitivity and specificity (argmax
decisions), macro one-vs-rest ROC AUC and the confusion matrix, each number with a 95% interval from the cluster
bootstrap over ``group`` (:func:`medeff.evaluation.bootstrap.cluster_bootstrap`: near-duplicate slices of one group
are drawn together, so the interval does not count a copy as new evidence). Within a protocol every model is
compared with a reference model on the same test images: the difference of each headline metric, with a paired
cluster-bootstrap interval (the same resample weights for both models).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medeff.errors import InputError
from medeff.evaluation.bootstrap import cluster_bootstrap
from medeff.evaluation.roc import weighted_auc

__all__ = ["HEADLINE", "metric_names", "protocol_metrics", "paired_difference", "compare_protocols"]

HEADLINE = ("accuracy", "balanced_accuracy", "macro_auc")


def metric_names(class_names: Sequence[str]) -> list[str]:
    """Names of the rows :func:`_statistic` returns, in order."""
    names = list(HEADLINE)
    for c in class_names:
        names += [f"sensitivity_{c}", f"specificity_{c}"]
    return names


def _statistic(y: np.ndarray, prob: np.ndarray) -> Any:
    """Weights ``(B, n)`` -> metrics ``(k, B)`` in the order of :func:`metric_names`."""
    k = prob.shape[1]
    pred = prob.argmax(axis=1)
    correct = (pred == y).astype(float)
    is_c = [(y == c).astype(float) for c in range(k)]
    hit_c = [((y == c) & (pred == c)).astype(float) for c in range(k)]
    rej_c = [((y != c) & (pred != c)).astype(float) for c in range(k)]

    def stat(w: np.ndarray) -> np.ndarray:
        w = np.atleast_2d(w)
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = w @ correct / total
            sens = [w @ hit_c[c] / (w @ is_c[c]) for c in range(k)]
            spec = [w @ rej_c[c] / (total - w @ is_c[c]) for c in range(k)]
        aucs = np.vstack([weighted_auc(prob[:, c], y == c, w) for c in range(k)])
        rows = [acc, np.mean(np.vstack(sens), axis=0), np.nanmean(aucs, axis=0) if k else acc * np.nan]
        for c in range(k):
            rows += [sens[c], spec[c]]
        return np.vstack(rows)

    return stat


def _records(names: Sequence[str], boot: dict) -> dict[str, dict[str, Any]]:
    out = {}
    for i, n in enumerate(names):
        est, lo, hi = (float(boot[x][i]) for x in ("estimate", "low", "high"))
        out[n] = {"value": None if np.isnan(est) else round(est, 4), "ci_low": None if np.isnan(lo) else round(lo, 4),
                  "ci_high": None if np.isnan(hi) else round(hi, 4), "ci_method": str(boot["method_used"][i])}
    return out


def protocol_metrics(y: np.ndarray, prob: np.ndarray, groups: Sequence[Any], class_names: Sequence[str], *,
                     n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Metrics of one model on one test set, with cluster-bootstrap intervals over ``groups``.

    Returns:
        ``{"n": .., "n_groups": .., "metrics": {name: {value, ci_low, ci_high, ci_method}}, "confusion":
        [[count of true i predicted j]]}``.
    """
    y = np.asarray(y, int)
    prob = np.asarray(prob, float)
    names = metric_names(class_names)
    boot = cluster_bootstrap(_statistic(y, prob), np.asarray(groups), n_resamples=n_resamples,
                             confidence=confidence, seed=seed, bounds=(0.0, 1.0))
    k = len(class_names)
    conf = np.zeros((k, k), dtype=int)
    np.add.at(conf, (y, prob.argmax(axis=1)), 1)
    return {"n": int(len(y)), "n_groups": int(len(set(groups))), "metrics": _records(names, boot),
            "confusion": conf.tolist()}


def paired_difference(y: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray, groups: Sequence[Any], *,
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Headline metrics of A minus those of B on the same images, with a paired cluster-bootstrap interval.

    Returns:
        ``{name: {value, ci_low, ci_high, ci_method}}`` for accuracy, balanced accuracy and macro AUC.
    """
    y = np.asarray(y, int)
    sa, sb = _statistic(y, np.asarray(prob_a, float)), _statistic(y, np.asarray(prob_b, float))
    h = len(HEADLINE)

    def diff(w: np.ndarray) -> np.ndarray:
        return sa(w)[:h] - sb(w)[:h]

    boot = cluster_bootstrap(diff, np.asarray(groups), n_resamples=n_resamples, confidence=confidence, seed=seed,
                             bounds=(-1.0, 1.0))
    return _records(HEADLINE, boot)


def compare_protocols(table: pd.DataFrame, class_names: Sequence[str], *, reference_model: str | None = None,
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                      prob_prefix: str = "prob_") -> dict[str, Any]:
    """Evaluate every (protocol, model) of ``table`` and compare each model with ``reference_model``.

    Args:
        table: one row per test image and model: ``file, protocol, model, label`` (class index), ``group`` and
            ``<prob_prefix><class>`` per class.
        class_names: class names in index order.
        reference_model: the model every other is compared with (paired), within each protocol; None: no comparison.
        n_resamples, confidence, seed: bootstrap settings.
        prob_prefix: prefix of the probability columns.

    Returns:
        ``{"protocols": {protocol: {"models": {model: protocol_metrics(...)}, "paired": {model: {"versus": ref,
        ...differences}}}}}``.

    Raises:
        InputError: missing columns, or models of one protocol predicted different images.
    """
    cols = ["file", "protocol", "model", "label", "group"] + [f"{prob_prefix}{c}" for c in class_names]
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise InputError(f"The prediction table lacks column(s) {missing} (it has {list(table.columns)}).",
                         hint="give one row per test image and model with these columns.")
    pcols = [f"{prob_prefix}{c}" for c in class_names]
    out: dict[str, Any] = {"class_names": list(class_names), "reference_model": reference_model, "protocols": {}}
    for protocol, part in table.groupby("protocol", sort=False):
        models: dict[str, Any] = {}
        frames: dict[str, pd.DataFrame] = {}
        for model, rows in part.groupby("model", sort=False):
            rows = rows.sort_values("file").reset_index(drop=True)
            if rows["file"].duplicated().any():
                raise InputError(f"Protocol {protocol!r}, model {model!r} has several rows for one file.",
                                 hint="give one prediction per test image and model.")
            frames[str(model)] = rows
            models[str(model)] = protocol_metrics(rows["label"].to_numpy(int), rows[pcols].to_numpy(float),
                                                  rows["group"].astype(str).tolist(), class_names,
                                                  n_resamples=n_resamples, confidence=confidence, seed=seed)
        paired: dict[str, Any] = {}
        if reference_model is not None and reference_model in frames:
            ref = frames[reference_model]
            for model, rows in frames.items():
                if model == reference_model:
                    continue
                if rows["file"].tolist() != ref["file"].tolist():
                    raise InputError(f"Protocol {protocol!r}: models {model!r} and {reference_model!r} predicted "
                                     "different test images; a paired comparison needs the same ones.",
                                     hint="predict the same test.json with every model.")
                paired[model] = {"versus": reference_model,
                                 **paired_difference(rows["label"].to_numpy(int), rows[pcols].to_numpy(float),
                                                     ref[pcols].to_numpy(float), rows["group"].astype(str).tolist(),
                                                     n_resamples=n_resamples, confidence=confidence, seed=seed)}
        out["protocols"][str(protocol)] = {"models": models, "paired": paired}
    return out
