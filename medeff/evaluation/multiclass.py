"""Multi-class evaluation, one-vs-rest: per-class AUC (DeLong and bootstrap), macro AUC, accuracy, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from medeff.errors import InputError
from medeff.evaluation.bootstrap import UNIT, cluster_bootstrap, interval_method
from medeff.evaluation.roc import delong, weighted_auc
from medeff.evaluation.tables import metric_record

__all__ = ["class_indices", "evaluate_multiclass"]


def class_indices(labels: pd.Series, names: Sequence[str], where: str) -> np.ndarray:
    """Map reference labels given as class names (any upper/lower case) or 0-based indices to class indices.

    Raises:
        InputError: two class names differ only in case, or a label matches no class.
    """
    folded = [str(n).strip().casefold() for n in names]
    if len(set(folded)) < len(folded):
        dup = sorted({str(n) for n, f in zip(names, folded) if folded.count(f) > 1})
        raise InputError(f"{where}: class names {dup} differ only in upper/lower case; reference labels are matched "
                         "to class names ignoring case, so these classes cannot be told apart.",
                         hint="give the classes names that differ in more than case (class_names=[...]).")
    vals = labels.astype(str).str.strip()
    lookup = {f: i for i, f in enumerate(folded)}
    lookup.update({str(i): i for i in range(len(names))})
    idx = vals.str.casefold().map(lookup)
    if idx.isna().any():
        bad = sorted(vals[idx.isna()].unique())[:10]
        raise InputError(f"{where}: reference labels {bad} match no class (classes: {list(names)}).",
                         hint="use the class names or 0-based class indices in the label column.")
    return idx.to_numpy(int)


def evaluate_multiclass(cases: pd.DataFrame, label_col: str, score_cols: Sequence[str], names: Sequence[str],
                        groups: np.ndarray, *, n_resamples: int, confidence: float, method: str, seed: int,
                        where: str) -> dict:
    """Per-class one-vs-rest AUCs, macro AUC, accuracy (argmax) and the confusion matrix."""
    k = len(score_cols)
    y = class_indices(cases[label_col], names, where)
    s = cases[list(score_cols)].to_numpy(float)
    pred = s.argmax(axis=1)
    onehot = np.eye(k, dtype=bool)[y]
    probabilities = bool(np.all((s >= 0) & (s <= 1)) and np.allclose(s.sum(axis=1), 1.0, atol=1e-3))

    def stat(w):
        aucs = [weighted_auc(s[:, c], onehot[:, c], w) for c in range(k)]
        rows = aucs + [np.nanmean(np.vstack(aucs), axis=0) if k else None, (w @ (pred == y).astype(float)) / w.sum(1)]
        if probabilities:
            rows.append((w @ ((s - onehot) ** 2).sum(axis=1)) / w.sum(1))
        return np.vstack(rows)

    bounds = [UNIT] * (k + 2) + ([(0.0, 2.0)] if probabilities else [])  # AUCs, accuracy; multi-class Brier <= 2
    boot = cluster_bootstrap(stat, groups, n_resamples=n_resamples, confidence=confidence, method=method, seed=seed,
                             bounds=bounds)

    def bm(i: int) -> dict:
        text, extra = interval_method(boot, i)
        return {"method": text, **extra}
    per_class = []
    for c, name in enumerate(names):
        n_pos = int(onehot[:, c].sum())
        row = {"class": str(name), "n_positive": n_pos, "n_negative": int(len(y) - n_pos)}
        if 0 < n_pos < len(y):
            dl = delong(onehot[:, c], s[:, c])
            lo, hi = dl.ci(0, confidence)
            row["auc"] = metric_record("auc", f"ROC AUC, {name} vs rest", dl.auc[0], lo, hi, "DeLong", n=len(y))
        else:
            row["auc"] = metric_record("auc", f"ROC AUC, {name} vs rest", None, method="not estimable (one class only)")
        row["auc_bootstrap"] = metric_record("auc_bootstrap", f"ROC AUC, {name} vs rest", boot["estimate"][c],
                                             boot["low"][c], boot["high"][c], n=len(y), **bm(c))
        per_class.append(row)
    headline = [
        metric_record("macro_auc", "Macro-average ROC AUC (one-vs-rest)", boot["estimate"][k], boot["low"][k],
                      boot["high"][k], n=len(y), **bm(k)),
        metric_record("accuracy", "Accuracy (highest-scoring class)", boot["estimate"][k + 1], boot["low"][k + 1],
                      boot["high"][k + 1], n=len(y), **bm(k + 1)),
    ]
    if probabilities:
        headline.append(metric_record("brier", "Brier score, multi-class (sum over classes; lower is better)",
                                      boot["estimate"][k + 2], boot["low"][k + 2], boot["high"][k + 2], n=len(y),
                                      **bm(k + 2)))
    cm = np.zeros((k, k), int)
    np.add.at(cm, (y, pred), 1)
    return {"multiclass": True, "class_names": [str(n) for n in names], "headline": headline,
            "per_class": per_class, "confusion_matrix": cm.tolist(), "probabilities": probabilities,
            "counts_per_class": {str(n): int((y == i).sum()) for i, n in enumerate(names)},
            "_reference": [str(names[i]) for i in y], "_predicted": [str(names[i]) for i in pred]}
