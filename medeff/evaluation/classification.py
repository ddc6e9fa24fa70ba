"""Classification evaluation: AUC with DeLong and cluster-bootstrap CIs, operating points, calibration, subgroups,
paired model comparison and multi-class one-vs-rest; works on any CSV of scores and reference labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medeff.errors import InputError
from medeff.evaluation import calibration as cal
from medeff.evaluation.bootstrap import UNIT, cluster_bootstrap, interval_method
from medeff.evaluation.multiclass import evaluate_multiclass
from medeff.evaluation.operating_points import (METRIC_LABELS, counts_at, metrics_from_counts,
                                                threshold_for_sensitivity, youden_threshold)
from medeff.evaluation.privacy import evaluation_pseudonymiser
from medeff.evaluation.provenance import collect_provenance
from medeff.evaluation.roc import (delong, delong_paired_test, weighted_auc, weighted_average_precision,
                                   weighted_roc_at)
from medeff.evaluation.subgroups import subgroup_tables
from medeff.evaluation.tables import (aggregate_rows, fold_label_case, metric_record, pseudonymise_ids, read_table,
                                      require_columns, to_float)
from medeff.utils.logging import get_logger

__all__ = ["evaluate_classification", "binary_statistic"]

log = get_logger(__name__)
_OP_KEYS = list(METRIC_LABELS)


def binary_statistic(scores: np.ndarray, y: np.ndarray, thresholds: Sequence[float], *, probabilities: bool,
                     bins: np.ndarray | None = None, n_bins: int = 10):
    """Build the weight statistic ``(B, n) -> (k, B)`` of every headline number, and the names of its rows."""
    names = ["auc", "average_precision"]
    if probabilities:
        names += ["brier", "ece"]
    for i, _ in enumerate(thresholds):
        names += [f"op{i}:{k}" for k in _OP_KEYS]

    def stat(w: np.ndarray) -> np.ndarray:
        rows = [weighted_auc(scores, y, w), weighted_average_precision(scores, y, w)]
        if probabilities:
            rows += [cal.weighted_brier(scores, y, w), cal.weighted_ece(scores, y, w, bins, n_bins)]
        for t in thresholds:
            m = metrics_from_counts(counts_at(scores, y, t, w))
            rows += [np.asarray(m[k], float) for k in _OP_KEYS]
        return np.vstack(rows)

    return stat, names


def _join_references(df: pd.DataFrame, references, case_col: str, where: str) -> pd.DataFrame:
    """Add the columns of a reference table (one row per case) to the predictions, matched on the case column."""
    ref, rpath = read_table(references, "references")
    rwhere = f"References '{rpath}'" if rpath else "References table"
    require_columns(ref, [case_col], rwhere)
    if ref[case_col].duplicated().any():
        raise InputError(f"{rwhere}: {int(ref[case_col].duplicated().sum())} case ids occur on more than one row.",
                         hint="give every case one reference row.")
    extra = [c for c in ref.columns if c not in df.columns]
    missing = ~df[case_col].astype(str).isin(set(ref[case_col].astype(str)))
    if missing.any():
        raise InputError(f"{where}: {int(missing.sum())} case(s) have no row in {rwhere} (first: "
                         f"{df.loc[missing, case_col].astype(str).head(3).tolist()}).",
                         hint="the references must list every predicted case under the same case id.")
    ref = ref.assign(**{case_col: ref[case_col].astype(str)})
    out = df.assign(**{case_col: df[case_col].astype(str)}).merge(ref[[case_col, *extra]], on=case_col, how="left")
    return out


def _labels_binary(values: pd.Series, positive_label, where: str, allow_one_class: bool = False) -> np.ndarray:
    """Boolean reference (True = positive); labels and ``positive_label`` are compared ignoring case."""
    vals = values.astype(str).str.strip()
    uniq = sorted(vals.unique())
    wanted = str(positive_label).strip().casefold()
    pos = next((v for v in uniq if v.casefold() == wanted), str(positive_label).strip())
    empty = vals.isin(["", "nan", "None"])
    if empty.any():
        raise InputError(f"{where}: {int(empty.sum())} of {len(vals)} cases have no reference label.",
                         hint="give every case a reference label, or none (an unlabelled set is listed, not scored).")
    if allow_one_class and len(uniq) == 1:
        return (vals == pos).to_numpy()
    if pos not in uniq:
        raise InputError(f"{where}: the positive label {pos!r} does not occur in the label column "
                         f"(values: {uniq[:10]}).",
                         hint="set positive_label to the reference value meaning 'positive' (e.g. 1 or malignant).")
    if len(uniq) > 2:
        raise InputError(f"{where}: a single score column needs a binary reference, but the label column has "
                         f"{len(uniq)} values ({uniq[:10]}).",
                         hint="give one score column per class in columns.scores for a multi-class evaluation.")
    return (vals == pos).to_numpy()


def evaluate_classification(
    predictions: str | Path | pd.DataFrame,
    *,
    columns: Mapping | None = None,
    positive_label: str | int = 1,
    class_names: Sequence[str] | None = None,
    aggregate: str | None = None,
    unit: str = "case",
    threshold: float = 0.5,
    target_sensitivities: Sequence[float] = (0.9, 0.95),
    calibration_bins: int = 10,
    calibration_binning: str = "uniform",
    decision_curve: Mapping | None = None,
    subgroups: Sequence[Mapping] = (),
    compare: Mapping | None = None,
    references: str | Path | pd.DataFrame | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    bootstrap_method: str = "percentile",
    seed: int = 0,
    hash_group_ids: bool | str = True,
    hash_case_ids: bool | str = "auto",
    pseudonym_salt: str | None = None,
    title: str = "Classification evaluation",
    config: Mapping | None = None,
) -> dict:
    """Evaluate scores against reference labels, per case (or per patient/nodule/image, as the case column says).

    Args:
        predictions: CSV path or DataFrame, one row per image or case.
        columns: ``case`` (unit of analysis), ``group`` (patient, for the cluster bootstrap; default = case),
            ``label`` (reference), ``scores`` (one column for binary, one per class for multi-class).
        positive_label: reference value of the positive class (binary).
        class_names: display names of the classes (multi-class; default: score column names).
        aggregate: ``mean`` or ``max`` to combine several rows of a case; None forbids duplicates.
        unit: what one case is, for the report ("patient", "nodule", ...).
        threshold: the configured operating threshold (positive when score >= threshold).
        target_sensitivities: triage operating points (highest threshold reaching each sensitivity).
        calibration_bins, calibration_binning: ECE / reliability bins (``uniform`` or ``quantile``).
        decision_curve: threshold range of the decision-curve analysis, ``{threshold_min, threshold_max,
            threshold_step}`` (default 0.01 to 0.5 in steps of 0.01); computed for probabilities only.
        subgroups: list of ``{column, bins (optional), name (optional)}``.
        compare: ``{score_column, name, predictions (optional CSV joined on the case column)}`` for a paired test.
        references: optional CSV (or DataFrame) holding the reference label (and group/subgroup columns) per case,
            joined on the case column (e.g. the ``crops.csv`` of ``medeff crops`` beside a ``predictions.csv``).
            Columns already in ``predictions`` are taken from there.
        n_resamples, confidence, bootstrap_method, seed: cluster bootstrap settings.
        hash_group_ids, hash_case_ids: pseudonymise ids in outputs (True, False or "auto").
        pseudonym_salt: secret key of the pseudonyms.
        title: report title.
        config: the configuration to record in the provenance.

    Returns:
        A JSON-ready results dict (see docs/evaluation.md), input to :func:`medeff.evaluation.render_report`.

    Raises:
        InputError: missing columns, non-numeric scores, conflicting labels, partly missing labels.

    A binary evaluation whose reference holds one class only, or that has no labels (``columns.label`` null, or a
    label column left empty), gives a triage listing instead of ROC analysis (``triage_only``, with a
    ``statement`` saying what is not estimable; see :mod:`medeff.evaluation.triage`).
    """
    columns = dict(columns or {})
    case_col = columns.get("case", "case_id")
    group_col = columns.get("group") or None
    label_col = columns.get("label", "label") or None
    score_cols = columns.get("scores", "score")
    score_cols = [score_cols] if isinstance(score_cols, str) else list(score_cols)
    model_name = columns.get("model_name") or "Model"
    df, path = read_table(predictions)
    where = f"Predictions '{path}'" if path else "Predictions table"
    if references is not None:
        df = _join_references(df, references, case_col, where)
    unlabelled = label_col is None or (references is not None and label_col not in df.columns) or (
        label_col in df.columns and len(score_cols) == 1
                                       and not df[label_col].astype(str).str.strip().replace("nan", "").any())
    if unlabelled:
        label_col = "_no_reference"
        df[label_col] = ""
    sub_cols = [s["column"] for s in subgroups]
    cmp_col = (compare or {}).get("score_column")
    cmp_file = (compare or {}).get("predictions")
    require_columns(df, [case_col, group_col, label_col, *score_cols, *sub_cols,
                         *([cmp_col] if cmp_col and not cmp_file else [])], where)
    df = df.dropna(subset=[case_col]).copy()
    notes: list[str] = []
    if not unlabelled:
        df[label_col], note = fold_label_case(df[label_col], where)
        if note:
            log.warning("%s", note)
            notes.append(note)
    for c in score_cols:
        df[c] = to_float(df, c, where)
    if cmp_col and not cmp_file:
        df[cmp_col] = to_float(df, cmp_col, where)
    if group_col:
        per_case_groups = df.groupby(case_col)[group_col].nunique()
        if (per_case_groups > 1).any():
            raise InputError(f"{where}: {int((per_case_groups > 1).sum())} case(s) belong to several groups.",
                             hint="each case id must map to one patient/group id.")
    keep = [group_col, *sub_cols] + ([cmp_col] if cmp_col and not cmp_file else [])
    score_agg = score_cols + ([cmp_col] if cmp_col and not cmp_file else [])
    cases = aggregate_rows(df, case_col, score_agg, label_col, keep, aggregate, where)

    if cmp_file:
        cdf, cpath = read_table(cmp_file, "comparison predictions")
        require_columns(cdf, [case_col, cmp_col], f"Comparison predictions '{cpath}'")
        cdf[cmp_col] = to_float(cdf, cmp_col, f"Comparison predictions '{cpath}'")
        cagg = cdf.groupby(case_col)[cmp_col].agg(aggregate or "first")
        missing = ~cases[case_col].isin(cagg.index)
        if missing.any():
            raise InputError(f"Comparison predictions '{cpath}' lack {int(missing.sum())} of the {len(cases)} cases.",
                             hint="both models must be scored on the same cases (matched by the case column).")
        cases[cmp_col] = cases[case_col].map(cagg).to_numpy(float)

    pseudo = evaluation_pseudonymiser(pseudonym_salt)
    groups_raw = cases[group_col] if group_col else cases[case_col]
    groups = groups_raw.astype(str).to_numpy()
    out_case, case_hashed = pseudonymise_ids(cases[case_col], hash_case_ids, pseudo, "C")
    out_group, group_hashed = pseudonymise_ids(groups_raw, hash_group_ids, pseudo, "P")

    settings = {"unit": unit, "aggregate": aggregate, "threshold": threshold,
                "target_sensitivities": list(target_sensitivities), "confidence": confidence,
                "n_resamples": n_resamples, "bootstrap_method": bootstrap_method, "seed": seed,
                "calibration_bins": calibration_bins, "calibration_binning": calibration_binning,
                "case_ids_pseudonymised": case_hashed, "group_ids_pseudonymised": group_hashed,
                "pseudonyms_stable_across_runs": pseudo.stable}
    inputs = {"predictions": path}
    if cmp_file:
        inputs["comparison_predictions"] = cmp_file
    results: dict = {
        "kind": "classification", "title": title, "settings": settings,
        "provenance": collect_provenance(dict(config or {}), inputs, seed),
        "counts": {"cases": int(len(cases)), "groups": int(len(np.unique(groups))), "input_rows": int(len(df))},
        "warnings": notes,
    }
    per_case = pd.DataFrame({"case": out_case.to_numpy(), "group": out_group.to_numpy(),
                             "n_rows": cases["n_rows"].to_numpy()})
    if len(score_cols) > 1:
        names = list(class_names or score_cols)
        if len(names) != len(score_cols):
            raise InputError(f"class_names has {len(names)} entries but there are {len(score_cols)} score columns.",
                             hint="give one class name per score column, in the same order.")
        results.update(evaluate_multiclass(cases, label_col, score_cols, names, groups, n_resamples=n_resamples,
                                           confidence=confidence, method=bootstrap_method, seed=seed, where=where))
        per_case["reference"] = results.pop("_reference")
        for c, name in zip(score_cols, names):
            per_case[f"score_{name}"] = cases[c].to_numpy(float)
        per_case["predicted"] = results.pop("_predicted")
    else:
        scores = cases[score_cols[0]].to_numpy(float)
        y = None if unlabelled else _labels_binary(cases[label_col], positive_label, where, allow_one_class=True)
        if y is None or not y.any() or y.all():
            from medeff.evaluation.triage import triage_results

            results["counts"].update({"positive": None if y is None else int(y.sum()),
                                      "negative": None if y is None else int((~y).sum())})
            results.update(triage_results(scores, y, groups, threshold, unit=unit, n_resamples=n_resamples,
                                          confidence=confidence, method=bootstrap_method, seed=seed,
                                          model_name=model_name))
            log.warning("%s: %s", where, results["statement"])
            if y is not None:
                per_case["reference"] = y.astype(int)
            per_case["score"] = scores
            per_case["predicted_positive"] = (scores >= threshold).astype(int)
            per_case["decision"] = np.where(scores >= threshold, "flag", "routine")
            for c in sub_cols:
                per_case[f"subgroup_{c}"] = cases[c].astype(str).to_numpy()
            results["per_case"] = per_case.to_dict(orient="records")
            return results
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        results["counts"].update({"positive": n_pos, "negative": n_neg})
        results.update(_binary(scores, y, groups, threshold, target_sensitivities, calibration_bins,
                               calibration_binning, n_resamples, confidence, bootstrap_method, seed, unit,
                               model_name))
        if results["probabilities"]:
            from medeff.evaluation.decision_curve import decision_curve as _decision_curve

            dc = _decision_curve(scores, y, groups, decision_curve, n_resamples=n_resamples, confidence=confidence,
                                 method=bootstrap_method, seed=seed)
            results["decision_curve"] = dc["points"]
            results["decision_curve_settings"] = {**dc["settings"], "ci_method": dc["ci_method"]}
        per_case["reference"] = y.astype(int)
        per_case["score"] = scores
        per_case["predicted_positive"] = (scores >= threshold).astype(int)
        if cmp_col:
            other = cases[cmp_col].to_numpy(float)
            results["comparison"] = _comparison(scores, other, y, groups, model_name,
                                                (compare or {}).get("name") or cmp_col, n_resamples, confidence,
                                                bootstrap_method, seed)
            per_case["score_comparison"] = other
        if subgroups:
            results["subgroups"] = subgroup_tables(cases, subgroups, scores, y, groups, threshold,
                                                   n_resamples=n_resamples, confidence=confidence,
                                                   method=bootstrap_method, seed=seed)
    for c in sub_cols:
        per_case[f"subgroup_{c}"] = cases[c].astype(str).to_numpy()
    results["per_case"] = per_case.to_dict(orient="records")
    return results


def _binary(scores, y, groups, threshold, targets, n_bins, binning, n_resamples, confidence, method, seed, unit,
            model_name) -> dict:
    probabilities = bool(np.all((scores >= 0) & (scores <= 1)))
    ops = [{"name": "configured", "label": f"Configured threshold ({threshold:g})", "threshold": float(threshold),
            "rule": "the threshold set in the configuration"}]
    ops.append({"name": "youden", "label": "Youden's J (max sensitivity + specificity - 1)",
                "threshold": youden_threshold(scores, y),
                "rule": "threshold maximising sensitivity + specificity - 1 (highest among ties)"})
    for t in targets:
        ops.append({"name": f"sensitivity_{round(t * 100):d}",
                    "label": f"Triage: sensitivity >= {t * 100:g}%",
                    "threshold": threshold_for_sensitivity(scores, y, t), "target_sensitivity": float(t),
                    "rule": f"highest threshold whose sensitivity on these data is >= {t * 100:g}%"})
    bins, _ = cal.bin_index(scores, n_bins, binning) if probabilities else (None, None)
    stat, names = binary_statistic(scores, y, [o["threshold"] for o in ops], probabilities=probabilities,
                                   bins=bins, n_bins=n_bins)
    boot = cluster_bootstrap(stat, groups, n_resamples=n_resamples, confidence=confidence, method=method, seed=seed,
                             bounds=UNIT)  # every row (AUC, AP, Brier, ECE, rates at thresholds) lies in [0, 1]
    idx = {n: i for i, n in enumerate(names)}

    def rec(key, label, name, **kw):
        i = idx[name]
        text, extra = interval_method(boot, i)
        return metric_record(key, label, boot["estimate"][i], boot["low"][i], boot["high"][i], text, **kw, **extra)

    dl = delong(y, scores)
    lo, hi = dl.ci(0, confidence)
    n = len(y)
    headline = [
        metric_record("auc", "ROC AUC (area under the ROC curve)", dl.auc[0], lo, hi, "DeLong", n=n,
                      se=float(np.sqrt(dl.cov[0, 0]))),
        rec("auc_bootstrap", "ROC AUC (area under the ROC curve)", "auc", n=n),
        rec("average_precision", "PR AUC (average precision)", "average_precision", n=n),
    ]
    calib = None
    if probabilities:
        headline += [rec("brier", "Brier score (mean squared error of probabilities; lower is better)", "brier", n=n),
                     rec("ece", f"Expected calibration error ({n_bins} {binning} bins; lower is better)", "ece", n=n)]
        calib = {"bins": n_bins, "binning": binning, "table": cal.reliability_table(scores, y, n_bins, binning)}
        headline += _recalibration(scores, y, groups, n, n_resamples, confidence, method, seed)
    op_out = []
    for i, op in enumerate(ops):
        c = counts_at(scores, y, op["threshold"])
        mets = [rec(k, METRIC_LABELS[k], f"op{i}:{k}", n=n) for k in _OP_KEYS]
        op_out.append({**op, "confusion": c, "metrics": mets, "flagged": c["tp"] + c["fp"]})
    grid = np.linspace(0, 1, 101)
    band = cluster_bootstrap(lambda w: weighted_roc_at(scores, y, w, grid).T, groups,
                             n_resamples=min(n_resamples, 500), confidence=confidence, method="percentile", seed=seed)
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, thr = roc_curve(y, scores, drop_intermediate=True)
    prec, rec_, _ = precision_recall_curve(y, scores)
    return {
        "model_name": model_name,
        "probabilities": probabilities,
        "headline": headline,
        "operating_points": op_out,
        "calibration": calib,
        "curves": {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                           "band_fpr": grid.tolist(), "band_low": np.nan_to_num(band["low"]).tolist(),
                           "band_high": np.nan_to_num(band["high"], nan=1.0).tolist()},
                   "pr": {"precision": prec.tolist(), "recall": rec_.tolist(), "prevalence": float(y.mean())}},
    }


def _recalibration(scores, y, groups, n, n_resamples, confidence, method, seed) -> list[dict]:
    """Headline rows ``calibration_slope`` and ``calibration_intercept`` (logistic recalibration on the logit of
    the probability; the intercept is calibration-in-the-large, the slope fixed at 1), cluster-bootstrap CIs."""
    boot = cluster_bootstrap(lambda w: cal.weighted_recalibration(scores, y, w), groups, n_resamples=n_resamples,
                             confidence=confidence, method=method, seed=seed, bounds=None)
    out = []
    for i, (key, label) in enumerate((
            ("calibration_slope", "Calibration slope (logistic recalibration on logit(p); ideal 1, below 1: "
                                  "over-confident)"),
            ("calibration_intercept", "Calibration intercept (calibration-in-the-large, slope fixed at 1; ideal 0, "
                                      "above 0: risks under-estimated)"))):
        text, extra = interval_method(boot, i)
        out.append(metric_record(key, label, boot["estimate"][i], boot["low"][i], boot["high"][i], text, n=n,
                                 **extra))
    return out


def _comparison(a, b, y, groups, name_a, name_b, n_resamples, confidence, method, seed) -> dict:
    test = delong_paired_test(y, a, b, confidence)
    boot = cluster_bootstrap(lambda w: (weighted_auc(a, y, w) - weighted_auc(b, y, w))[None, :], groups,
                             n_resamples=n_resamples, confidence=confidence, method=method, seed=seed,
                             bounds=(-1.0, 1.0))
    text, extra = interval_method(boot, 0)
    db = delong(y, b)
    lo_b, hi_b = db.ci(0, confidence)
    return {"model_a": name_a, "model_b": name_b, **test,
            "auc_b_ci_low": float(lo_b), "auc_b_ci_high": float(hi_b),
            "difference_bootstrap_ci_low": float(boot["low"][0]),
            "difference_bootstrap_ci_high": float(boot["high"][0]),
            "difference_bootstrap_ci_method": text, "difference_bootstrap_ci_method_used": extra["ci_method_used"],
            "difference_bootstrap_ci_clipped": extra["ci_clipped"],
            "test": "paired DeLong test (two-sided)"}
