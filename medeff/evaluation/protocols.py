"""Split protocols side by side: the same models evaluated on test sets drawn by different splits.

Input is one long table of test predictions: ``file, protocol, model, label, group`` and one probability column per
class. For every (protocol, model): accuracy, balanced accuracy, per-class sensitivity and specificity (argmax
decisions), macro one-vs-rest ROC AUC and the confusion matrix, each number with a 95% interval from the cluster
bootstrap over ``group`` (:func:`medeff.evaluation.bootstrap.cluster_bootstrap`: near-duplicate slices of one group
are drawn together, so the interval does not count a copy as new evidence). Within a protocol every model is
compared with a reference model on the same test images: the difference of each headline metric, with a paired
cluster-bootstrap interval (the same resample weights for both models).

:func:`ovr_delong` adds DeLong's analytic view for the AUCs: one-vs-rest AUC per class and their macro mean per
model, with 95% intervals, and paired tests of every pair of models on the same images. DeLong's structural
components are computed per class; summed per image they give each image's contribution to the macro AUC, from
which the variances and the covariance between models follow (for one class this is DeLong's variance exactly).
DeLong treats images as independent; with near-duplicate groups the ``clustered`` variant sums the components
within each group first (a cluster-robust variance, Obuchowski 1997), which is wider when copies share a group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medeff.errors import InputError
from medeff.evaluation.bootstrap import cluster_bootstrap
from medeff.evaluation.roc import midrank, weighted_auc

__all__ = ["HEADLINE", "metric_names", "protocol_metrics", "paired_difference", "compare_protocols", "ovr_delong"]

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


def _ovr_components(y: np.ndarray, prob: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest AUC per class ``(k,)`` and each image's DeLong component ``(k, n)``, scaled so that the sum of
    squares over images is DeLong's variance (``(V - AUC) / sqrt(m (m - 1))`` for the m positives, likewise the
    negatives); a class without positives or negatives gets NaN."""
    n = len(y)
    auc, psi = np.full(k, np.nan), np.zeros((k, n))
    for c in range(k):
        pos = y == c
        m, q = int(pos.sum()), int((~pos).sum())
        if m < 2 or q < 2:
            continue
        x, z = prob[pos, c], prob[~pos, c]
        tz = midrank(np.r_[x, z])
        v10 = (tz[:m] - midrank(x)) / q
        v01 = 1.0 - (tz[m:] - midrank(z)) / m
        auc[c] = float(v10.mean())
        psi[c, pos] = (v10 - auc[c]) / np.sqrt(m * (m - 1))
        psi[c, ~pos] = (v01 - auc[c]) / np.sqrt(q * (q - 1))
    return auc, psi


def ovr_delong(y: np.ndarray, probs: Mapping[str, np.ndarray], class_names: Sequence[str], *,
               groups: Sequence[Any] | None = None, confidence: float = 0.95) -> dict[str, Any]:
    """One-vs-rest AUCs with DeLong intervals and paired DeLong tests between models on the same images.

    Args:
        y: ``(n,)`` class index per image.
        probs: model name -> ``(n, k)`` class probabilities (same images, same order).
        class_names: the ``k`` class names.
        groups: optional group per image: adds ``clustered`` intervals and tests, with the components summed within
            each group (near-duplicate slices counted once).
        confidence: interval level.

    Returns:
        ``{"models": {model: {"macro"|<class>: {auc, ci_low, ci_high[, clustered_ci_low, clustered_ci_high]}}},
        "paired": [{"a", "b", "auc": "macro"|<class>, difference, ci_low, ci_high, z, p[, clustered_...]}]}``;
        ``macro`` is the mean of the class AUCs.
    """
    from scipy import stats

    y = np.asarray(y, int)
    names = list(probs)
    k = len(class_names)
    zq = float(stats.norm.ppf(0.5 + confidence / 2.0))
    comp = {m: _ovr_components(y, np.asarray(probs[m], float), k) for m in names}
    targets = [("macro", None)] + [(str(c), i) for i, c in enumerate(class_names)]
    if groups is not None:
        codes = pd.factorize(pd.Series(list(groups)).astype(str))[0]
        summed = np.zeros((codes.max() + 1, len(y)))
        summed[codes, np.arange(len(y))] = 1.0

    def infl(m: str, idx: int | None) -> tuple[float, np.ndarray]:
        auc, psi = comp[m]
        if idx is None:
            return float(np.mean(auc)), psi.mean(axis=0)
        return float(auc[idx]), psi[idx]

    def interval(est: float, var: float, lo: float, hi: float) -> tuple[float, float]:
        se = float(np.sqrt(max(var, 0.0)))
        return max(lo, est - zq * se), min(hi, est + zq * se)

    models: dict[str, Any] = {}
    for m in names:
        rows: dict[str, Any] = {}
        for key, idx in targets:
            a, v = infl(m, idx)
            if np.isnan(a):
                rows[key] = {"auc": None}
                continue
            lo, hi = interval(a, float(v @ v), 0.0, 1.0)
            rows[key] = {"auc": round(a, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4)}
            if groups is not None:
                g = summed @ v
                lo, hi = interval(a, float(g @ g), 0.0, 1.0)
                rows[key].update(clustered_ci_low=round(lo, 4), clustered_ci_high=round(hi, 4))
        models[m] = rows
    paired: list[dict[str, Any]] = []
    for i, a_name in enumerate(names):
        for b_name in names[i + 1:]:
            for key, idx in targets:
                (aa, va), (ab, vb) = infl(a_name, idx), infl(b_name, idx)
                if np.isnan(aa) or np.isnan(ab):
                    continue
                d, dv = aa - ab, va - vb
                row: dict[str, Any] = {"a": a_name, "b": b_name, "auc": key, "difference": round(d, 4)}
                for prefix, vec in [("", dv)] + ([("clustered_", summed @ dv)] if groups is not None else []):
                    se = float(np.sqrt(max(float(vec @ vec), 0.0)))
                    z = d / se if se > 1e-12 else (0.0 if abs(d) < 1e-12 else float(np.sign(d) * np.inf))
                    p = float(2.0 * stats.norm.sf(abs(z))) if np.isfinite(z) else 0.0
                    row.update({f"{prefix}ci_low": round(d - zq * se, 4), f"{prefix}ci_high": round(d + zq * se, 4),
                                f"{prefix}z": round(float(z), 3), f"{prefix}p": float(f"{p:.4g}")})
                paired.append(row)
    return {"class_names": list(class_names), "n": int(len(y)),
            "n_groups": None if groups is None else int(summed.shape[0]), "models": models, "paired": paired}


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
        ...differences}}, "delong": ovr_delong(...) of all models (None when they predicted different images)}}}``.

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
        base = next(iter(frames.values()), None)
        same = base is not None and all(f["file"].tolist() == base["file"].tolist() for f in frames.values())
        delong_ = (ovr_delong(base["label"].to_numpy(int), {m: f[pcols].to_numpy(float) for m, f in frames.items()},
                              class_names, groups=base["group"].astype(str).tolist(), confidence=confidence)
                   if same else None)
        out["protocols"][str(protocol)] = {"models": models, "paired": paired, "delong": delong_}
    return out
