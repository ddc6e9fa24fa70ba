"""Subgroup tables: AUC (DeLong), sensitivity and specificity with CIs for each level of any column."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medeff.errors import InputError
from medeff.evaluation.bootstrap import UNIT, cluster_bootstrap, interval_method
from medeff.evaluation.operating_points import counts_at, metrics_from_counts
from medeff.evaluation.roc import delong, weighted_auc
from medeff.evaluation.tables import metric_record
from medeff.utils.progress import track

__all__ = ["subgroup_levels", "subgroup_tables"]


def subgroup_levels(values: pd.Series, bins: Sequence[float] | None, unit: str = "") -> pd.Series:
    """Level label per case: the value itself, or its bin ``[a, b) unit`` when ``bins`` are given.

    Missing values form the level 'missing'.
    """
    if not bins:
        return values.astype(str).where(values.notna(), "missing").replace({"nan": "missing", "": "missing"})
    num = pd.to_numeric(values, errors="coerce")
    edges = [float(b) for b in bins]
    u = f" {unit}" if unit else ""
    labels = [f"[{edges[i]:g}, {edges[i + 1]:g}){u}" for i in range(len(edges) - 1)]
    cut = pd.cut(num, edges, right=False, labels=labels)
    return cut.astype(object).where(cut.notna(), "missing").astype(str)


def subgroup_tables(cases: pd.DataFrame, specs: Sequence[Mapping], scores: np.ndarray, y: np.ndarray,
                    groups: np.ndarray, threshold: float, *, n_resamples: int, confidence: float, method: str,
                    seed: int) -> list[dict]:
    """One table per subgroup spec ``{column, bins?, unit?, name?}``; a level with one class only has its AUC and the
    undefined rate reported as not estimable (value None, ``estimable: False``)."""
    out = []
    for spec in specs:
        col = spec.get("column")
        if col not in cases.columns:
            raise InputError(f"Subgroup column {col!r} is not in the predictions.",
                             hint="fix evaluation subgroups[].column in the config.")
        levels = subgroup_levels(cases[col], spec.get("bins"), spec.get("unit", ""))
        rows = []
        for level in track(sorted(levels.unique(), key=_level_key), "Subgroup intervals"):
            sel = (levels == level).to_numpy()
            ys, ss, gs = y[sel], scores[sel], groups[sel]
            n_pos, n_neg = int(ys.sum()), int((~ys).sum())
            estimable = n_pos > 0 and n_neg > 0

            def stat(w, ss=ss, ys=ys):
                m = metrics_from_counts(counts_at(ss, ys, threshold, w))
                return np.vstack([weighted_auc(ss, ys, w), m["sensitivity"], m["specificity"]])

            boot = cluster_bootstrap(stat, gs, n_resamples=n_resamples, confidence=confidence, method=method,
                                     seed=seed, bounds=UNIT)
            if estimable:
                dl = delong(ys, ss)
                lo, hi = dl.ci(0, confidence)
                auc = metric_record("auc", "ROC AUC", dl.auc[0], lo, hi, "DeLong", n=int(sel.sum()))
            else:
                auc = metric_record("auc", "ROC AUC", None, method="not estimable (one class only)",
                                    n=int(sel.sum()))
            sens = metric_record("sensitivity", "Sensitivity", boot["estimate"][1] if n_pos else None,
                                 boot["low"][1], boot["high"][1], n=n_pos, **_method(boot, 1))
            spec_ = metric_record("specificity", "Specificity", boot["estimate"][2] if n_neg else None,
                                  boot["low"][2], boot["high"][2], n=n_neg, **_method(boot, 2))
            rows.append({"level": str(level), "n": int(sel.sum()), "n_positive": n_pos, "n_negative": n_neg,
                         "n_groups": int(len(np.unique(gs))), "estimable": estimable,
                         "metrics": [auc, sens, spec_]})
        out.append({"column": col, "name": spec.get("name") or col, "threshold": float(threshold), "rows": rows})
    return out


def _method(boot: dict, i: int) -> dict:
    text, extra = interval_method(boot, i)
    return {"method": text, **extra}


def _level_key(level: str):
    if level == "missing":
        return (2, 0.0, level)
    if level.startswith("["):
        try:
            return (0, float(level[1:].split(",")[0]), level)
        except ValueError:
            pass
    return (1, 0.0, level)
