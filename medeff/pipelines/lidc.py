"""Glue of the LIDC nodule triage pipeline (``pipelines/lidc_nodule_slices.sh``): plain functions over slice archives.

A data folder holds ``nodule_slices_64x64.npz`` (``images`` [N, 64, 64] uint8 masked slices, ``nodule_key``
``exam/nodule``, ``slice_index``, optionally ``labels``) and optionally ``index.csv`` (per slice: ``exam_id``,
``nodule_id``, ``diameter_mm`` ...; label columns may be missing). Everything here works per nodule:

* :func:`nodule_table` - one row per nodule (exam, reference label when known, diameter, number of slices);
* :func:`index_folds` - the patient-level fold of each nodule, read from a ``medeff index`` file;
* :func:`write_fold_archives` / :func:`write_subset` / :func:`split_by_exam` - archive subsets (validation folds,
  exam-level train/test splits);
* :func:`baseline_scores` - out-of-fold scores of the diameter and radiomics baselines on the same folds;
* :func:`assemble` - cross-validation table and the final per-nodule predictions;
* :func:`cv_summary` / :func:`cv_section` - AUCs with CIs and paired DeLong tests, as a report section.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medeff.errors import InputError
from medeff.utils.atomic import atomic_path, write_json_atomic, write_text_atomic
from medeff.utils.logging import get_logger

__all__ = ["ARCHIVE", "SliceArchive", "read_archive", "nodule_table", "index_folds", "write_subset",
           "write_fold_archives", "split_by_exam", "baseline_scores", "read_fold_predictions", "assemble",
           "cv_summary", "cv_section", "add_cv_section", "SCORES", "SCORES_COMBINED"]

log = get_logger(__name__)

ARCHIVE = "nodule_slices_64x64.npz"
INDEX_CSV = "index.csv"
LABEL_COLUMNS = ("folder_class", "radiomics_class", "malignancy_rating")  # reference-derived columns of index.csv


@dataclass
class SliceArchive:
    """The slices of a data folder: images, nodule key and slice order per row, labels when present."""

    images: np.ndarray
    keys: np.ndarray
    slice_index: np.ndarray
    labels: np.ndarray | None
    table: pd.DataFrame | None
    path: Path


def _binary_labels(raw: np.ndarray, path: Path) -> np.ndarray:
    """The archive's labels as 0 (benign) / 1 (malignant); any other value is an error, never a silent class."""
    values = np.asarray(raw)
    if values.dtype.kind not in "biuf":
        raise InputError(f"Archive '{path}' has labels of type {values.dtype}, not numbers.",
                         hint="store labels as 0 (benign) and 1 (malignant).", path=str(path))
    bad = ~np.isin(values, (0, 1))
    if bad.any():
        shown = sorted({str(v) for v in values[bad].tolist()})[:5]
        raise InputError(f"Archive '{path}' has {int(bad.sum())} label(s) that are neither 0 (benign) nor 1 "
                         f"(malignant): {', '.join(shown)} (first rows {np.flatnonzero(bad)[:5].tolist()}).",
                         hint="unknown labels are not negatives: drop `labels` from the archive to use it as an "
                         "unlabelled test folder, or correct those rows.", path=str(path))
    return values.astype(int)


def read_archive(data_dir: str | Path) -> SliceArchive:
    """Read ``nodule_slices_64x64.npz`` (and ``index.csv`` when present) of a data folder.

    Raises:
        InputError: the archive is missing, lacks ``images``/``nodule_key``, has labels other than 0/1, or
            ``index.csv`` has another row count.
    """
    data_dir = Path(data_dir)
    path = data_dir / ARCHIVE
    if not path.is_file():
        raise InputError(f"'{data_dir}' holds no {ARCHIVE}.", hint="pass a folder in the format of "
                         "lidc_nodule_slices_64 (the slice archive and optionally index.csv).", path=str(data_dir))
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("images", "nodule_key") if k not in z.files]
        if missing:
            raise InputError(f"Archive '{path}' lacks {missing} (it holds {sorted(z.files)}).",
                             hint="store images[row, H, W] and nodule_key[row] ('exam/nodule').", path=str(path))
        images = z["images"]
        keys = z["nodule_key"].astype(str)
        order = z["slice_index"] if "slice_index" in z.files else np.zeros(len(keys), dtype=int)
        labels = _binary_labels(z["labels"], path) if "labels" in z.files else None
    table = None
    csv_path = data_dir / INDEX_CSV
    if csv_path.is_file():
        table = pd.read_csv(csv_path)
        if len(table) != len(keys):
            raise InputError(f"'{csv_path}' has {len(table)} rows but '{path}' has {len(keys)} slices.",
                             hint="index.csv must hold one row per archive row, in the same order.", path=str(csv_path))
    return SliceArchive(images, keys, np.asarray(order), labels, table, path)


def nodule_table(data_dir: str | Path | SliceArchive) -> pd.DataFrame:
    """One row per nodule, in first-appearance order.

    Returns:
        Columns ``nodule_key``, ``exam_id`` (the part of the key before ``/``), ``n_slices``, ``label`` (nullable
        integer; missing when the archive has no labels) and ``diameter_mm`` (NaN without ``index.csv``).

    Raises:
        InputError: the slices of one nodule disagree on the label or the diameter.
    """
    arc = data_dir if isinstance(data_dir, SliceArchive) else read_archive(data_dir)
    df = pd.DataFrame({"nodule_key": arc.keys})
    df["label"] = pd.array(arc.labels, dtype="Int64") if arc.labels is not None else pd.NA
    df["diameter_mm"] = (arc.table["diameter_mm"].to_numpy(float)
                         if arc.table is not None and "diameter_mm" in arc.table.columns else np.nan)
    g = df.groupby("nodule_key", sort=False)
    for col in ("label", "diameter_mm"):
        if (g[col].nunique(dropna=True) > 1).any():
            raise InputError(f"'{arc.path}': slices of one nodule disagree on {col}.",
                             hint="labels and diameters are per nodule: every slice must carry the same value.")
    out = g.agg(label=("label", "first"), diameter_mm=("diameter_mm", "first"),
                n_slices=("label", "size")).reset_index()
    out.insert(1, "exam_id", out["nodule_key"].str.split("/").str[0])
    return out


def index_folds(index_json: str | Path, data_dir: str | Path | SliceArchive) -> dict[str, int]:
    """Fold of each nodule, read from a ``medeff index`` file of the archive (its cases point at archive rows).

    Raises:
        InputError: a case of the index points at rows of several nodules or outside the archive.
    """
    arc = data_dir if isinstance(data_dir, SliceArchive) else read_archive(data_dir)
    with open(index_json, encoding="utf-8") as fh:
        index = json.load(fh)
    folds: dict[str, int] = {}
    for case in index["cases"]:
        rows = case["archive"]["rows"]
        keys = set(arc.keys[rows].tolist()) if max(rows) < len(arc.keys) else None
        if not keys or len(keys) != 1:
            raise InputError(f"Index '{index_json}': case {case['case_id']} does not match one nodule of "
                             f"'{arc.path}'.", hint="index the same data folder with `medeff index`.")
        folds[keys.pop()] = int(case["fold"])
    return folds


def write_subset(data_dir: str | Path | SliceArchive, nodule_keys: Sequence[str], out_dir: str | Path, *,
                 drop_labels: bool = False) -> Path:
    """Write the slices of ``nodule_keys`` as a data folder (archive + ``index.csv`` subset), atomically.

    Args:
        data_dir: source folder (or an archive already read).
        nodule_keys: nodules to keep.
        out_dir: destination folder (created).
        drop_labels: leave out ``labels`` and the label columns of ``index.csv`` (an unlabelled test folder).

    Returns:
        The destination folder.
    """
    arc = data_dir if isinstance(data_dir, SliceArchive) else read_archive(data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = np.flatnonzero(np.isin(arc.keys, np.asarray(list(nodule_keys), dtype=str)))
    arrays = {"images": arc.images[rows], "nodule_key": arc.keys[rows], "slice_index": arc.slice_index[rows]}
    if arc.labels is not None and not drop_labels:
        arrays["labels"] = arc.labels[rows].astype(np.uint8)
    with atomic_path(out_dir / ARCHIVE, overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    if arc.table is not None:
        tab = arc.table.iloc[rows].copy()
        if drop_labels:
            tab = tab.drop(columns=[c for c in LABEL_COLUMNS if c in tab.columns])
        if "row" in tab.columns:
            tab["row"] = np.arange(len(tab))
        write_text_atomic(out_dir / INDEX_CSV, tab.to_csv(index=False), overwrite=True)
    return out_dir


def write_fold_archives(index_json: str | Path, data_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the validation part of every fold of the index as ``out_dir/fold<k>/`` (for out-of-fold predictions).

    Returns:
        The fold folders, by fold number.
    """
    arc = read_archive(data_dir)
    folds = index_folds(index_json, arc)
    out = []
    for k in sorted(set(folds.values())):
        keys = [key for key, f in folds.items() if f == k]
        out.append(write_subset(arc, keys, Path(out_dir) / f"fold{k}"))
    log.info("Wrote %d validation-fold archives under %s.", len(out), out_dir)
    return out


def split_by_exam(data_dir: str | Path, train_out: str | Path, test_out: str | Path, *, test_fraction: float = 0.2,
                  max_exams: int | None = None, seed: int = 0, drop_test_labels: bool = False) -> dict[str, int]:
    """Split a data folder by exam into a train and a test folder (no exam in both).

    Args:
        data_dir: source folder.
        train_out, test_out: destination folders.
        test_fraction: share of the (kept) exams that go to the test folder.
        max_exams: keep only this many exams (drawn at random) before splitting; None keeps all.
        seed: seed of the draw.
        drop_test_labels: write the test folder without labels.

    Returns:
        Counts: ``train_exams``, ``test_exams``, ``train_nodules``, ``test_nodules``.
    """
    arc = read_archive(data_dir)
    nod = nodule_table(arc)
    exams = np.array(sorted(nod["exam_id"].unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(exams)
    if max_exams is not None:
        exams = exams[:max_exams]
    n_test = max(1, int(round(len(exams) * test_fraction)))
    test_ex, train_ex = set(exams[:n_test]), set(exams[n_test:])
    train_keys = nod.loc[nod["exam_id"].isin(train_ex), "nodule_key"].tolist()
    test_keys = nod.loc[nod["exam_id"].isin(test_ex), "nodule_key"].tolist()
    write_subset(arc, train_keys, train_out)
    write_subset(arc, test_keys, test_out, drop_labels=drop_test_labels)
    return {"train_exams": len(train_ex), "test_exams": len(test_ex), "train_nodules": len(train_keys),
            "test_nodules": len(test_keys)}


def baseline_scores(data_dir: str | Path | SliceArchive, folds: Mapping[str, int], *, C: float = 1.0,
                    max_iter: int = 2000) -> pd.DataFrame:
    """Out-of-fold scores of the two baselines, each fitted per fold on the training folds only.

    * ``score_diameter``: logistic regression on ``diameter_mm`` alone (a monotone map of the diameter).
    * ``score_radiomics``: logistic regression (standardised features, L2 penalty ``C``) on the first-order and
      shape features of :func:`medeff.pipelines.radiomics.nodule_features`.

    Returns:
        ``nodule_key, exam_id, fold, label, diameter_mm, score_diameter, score_radiomics`` (one row per nodule).

    Raises:
        InputError: labels or diameters are missing, or a nodule has no fold.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medeff.pipelines.radiomics import nodule_features

    arc = data_dir if isinstance(data_dir, SliceArchive) else read_archive(data_dir)
    nod = nodule_table(arc)
    if nod["label"].isna().any() or nod["diameter_mm"].isna().any():
        raise InputError(f"'{arc.path}': the baselines need a label and diameter_mm for every nodule.",
                         hint="the development folder must hold labels and index.csv with diameter_mm.")
    missing = sorted(set(nod["nodule_key"]) - set(folds))
    if missing:
        raise InputError(f"{len(missing)} nodule(s) of '{arc.path}' have no fold (e.g. {missing[0]}).",
                         hint="index the same folder with `medeff index` and pass that index.")
    keys, feats, _ = nodule_features(arc.images, arc.keys)
    feats = pd.DataFrame(feats, index=keys).loc[nod["nodule_key"]].to_numpy()
    nod["fold"] = nod["nodule_key"].map(folds).astype(int)
    y = nod["label"].to_numpy(int)
    inputs = {"score_diameter": nod[["diameter_mm"]].to_numpy(float), "score_radiomics": feats}
    for name, x in inputs.items():
        out = np.full(len(nod), np.nan)
        for k in sorted(nod["fold"].unique()):
            test = nod["fold"].to_numpy() == k
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
            model.fit(x[~test], y[~test])
            out[test] = model.predict_proba(x[test])[:, 1]
        nod[name] = out
    return nod[["nodule_key", "exam_id", "fold", "label", "diameter_mm", "score_diameter", "score_radiomics"]]


def read_fold_predictions(pattern: str) -> pd.DataFrame:
    """Concatenate ``medeff predict`` tables (``predictions.csv``) matched by a glob pattern.

    Returns:
        ``nodule_key, score`` (one row per nodule; ``case_id`` of an archive prediction is the nodule key).

    Raises:
        InputError: nothing matches, or a nodule appears in two tables.
    """
    files = sorted(glob.glob(pattern))
    if not files:
        raise InputError(f"No prediction table matches '{pattern}'.", hint="run `medeff predict` for every fold first.")
    df = pd.concat([pd.read_csv(f, usecols=["case_id", "score"]) for f in files], ignore_index=True)
    if df["case_id"].duplicated().any():
        raise InputError(f"A nodule appears in several prediction tables of '{pattern}'.",
                         hint="each validation fold must hold different nodules.")
    return df.rename(columns={"case_id": "nodule_key"})


def _threshold(scores: np.ndarray, y: np.ndarray, rule: Mapping[str, Any]) -> float:
    """Decision threshold from the out-of-fold scores: ``{rule: fixed, value}`` or ``{rule: sensitivity, target}``."""
    from medeff.evaluation.operating_points import threshold_for_sensitivity
    from medeff.utils.options import look_up

    kind = look_up(str(rule.get("rule", "fixed")), ("fixed", "sensitivity"), what="threshold rule",
                   key="threshold.rule")
    if kind == "fixed":
        return float(rule.get("value", 0.5))
    return threshold_for_sensitivity(scores, y, float(rule.get("target", 0.95)))


def assemble(train_dir: str | Path, index_json: str | Path, oof_pattern: str, test_dir: str | Path,
             test_predictions: str | Path, out_dir: str | Path, work_dir: str | Path, *,
             threshold: Mapping[str, Any] | None = None, C: float = 1.0,
             combine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Join the out-of-fold model scores with both baselines and write the final per-nodule predictions.

    With ``combine`` (``{method: logit_mean, target: rating, alpha: 10, weights: {network: .5, features: .5}}``)
    the shipped score is the fixed logit mean of the network and the feature model of
    :mod:`medeff.pipelines.lidc_combine` (``score_model``), both parts kept alone as ``score_network`` and
    ``score_features``; ``method: none`` (or no ``combine``) ships the network alone.

    Writes ``work_dir/cv_predictions.csv`` (one row per development nodule: fold, label, the three scores),
    ``work_dir/test_eval.csv`` (test nodules with probability, exam and label when known, for ``medeff evaluate``)
    and ``out_dir/predictions.csv`` (``nodule_key, probability_malignant, predicted_label``).

    Args:
        train_dir, index_json: development folder and its ``medeff index`` file (folds).
        oof_pattern: glob of the per-fold ``medeff predict`` tables of the validation folds.
        test_dir, test_predictions: test folder and the ``medeff predict`` table of the fold ensemble on it.
        out_dir, work_dir: output folder, folder of the intermediate files.
        threshold: ``{rule: sensitivity, target: 0.95}`` (chosen on the out-of-fold scores) or
            ``{rule: fixed, value: 0.5}``.
        C: inverse L2 strength of the radiomics logistic regression.
        combine: the combination with the feature model (above); None ships the network alone.

    Returns:
        ``threshold``, ``cv_nodules``, ``test_nodules``, ``test_labelled``, ``combine``.

    Raises:
        InputError: a development or test nodule lacks a prediction.
    """
    arc = read_archive(train_dir)
    cv = baseline_scores(arc, index_folds(index_json, arc), C=C)
    oof = read_fold_predictions(oof_pattern).rename(columns={"score": "score_model"})
    cv = cv.merge(oof, on="nodule_key", how="left")
    if cv["score_model"].isna().any():
        raise InputError(f"{int(cv['score_model'].isna().sum())} development nodule(s) lack an out-of-fold "
                         f"prediction in '{oof_pattern}'.", hint="predict the validation part of every fold.")
    y = cv["label"].to_numpy(int)
    test_arc = read_archive(test_dir)
    test = nodule_table(test_arc)
    pred = pd.read_csv(test_predictions, usecols=["case_id", "score"]).rename(
        columns={"case_id": "nodule_key", "score": "probability_malignant"})
    test = test.merge(pred, on="nodule_key", how="left")
    if test["probability_malignant"].isna().any():
        raise InputError(f"{int(test['probability_malignant'].isna().sum())} test nodule(s) lack a prediction in "
                         f"'{test_predictions}'.", hint="predict the whole test archive.")
    method = _combine_method(combine)
    if method != "none":
        from medeff.pipelines.lidc_combine import combine_scores

        cv, test = combine_scores(arc, cv, test_arc, test, dict(combine or {}))
    thr = _threshold(cv["score_model"].to_numpy(float), y, threshold or {"rule": "fixed", "value": 0.5})
    test["predicted_label"] = (test["probability_malignant"] >= thr).astype(int)
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(work_dir / "cv_predictions.csv", cv.to_csv(index=False), overwrite=True)
    labelled = bool(test["label"].notna().all())
    write_text_atomic(work_dir / "test_eval.csv",
                      test[["nodule_key", "exam_id", "label", "diameter_mm", "probability_malignant"]]
                      .to_csv(index=False), overwrite=True)
    write_text_atomic(out_dir / "predictions.csv",
                      test[["nodule_key", "probability_malignant", "predicted_label"]].to_csv(index=False),
                      overwrite=True)
    info = {"threshold": thr, "threshold_rule": dict(threshold or {}), "cv_nodules": int(len(cv)),
            "test_nodules": int(len(test)), "test_labelled": labelled,
            "combine": dict(combine or {}) if method != "none" else None}
    write_json_atomic(work_dir / "assemble.json", info, overwrite=True)
    write_text_atomic(work_dir / "threshold.txt", f"{thr:.17g}\n", overwrite=True)
    return info


def _combine_method(combine: Mapping[str, Any] | None) -> str:
    from medeff.utils.options import look_up

    if not combine:
        return "none"
    return look_up(str(combine.get("method", "none")), ("none", "logit_mean"), what="combination method",
                   key="combine.method")


SCORES = {"score_model": "EfficientNet (2.5D, fold models)", "score_radiomics": "Radiomics (first-order + shape, LR)",
          "score_diameter": "Diameter alone (LR)"}
# the shipped score of a combined recipe (combine.method=logit_mean) and its two parts
SCORES_COMBINED = {"score_model": "EfficientNet + features (logit mean)",
                   "score_network": "EfficientNet alone (2.5D, fold models)",
                   "score_features": "Features alone (radiomics + diameter, ridge on the rating)",
                   "score_radiomics": "Radiomics (first-order + shape, LR)", "score_diameter": "Diameter alone (LR)"}


def cv_summary(cv: pd.DataFrame | str | Path, *, confidence: float = 0.95, n_resamples: int = 1000,
               seed: int = 0, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Per-nodule ROC AUC of each score of the cross-validation table, with CIs, and paired DeLong tests.

    Args:
        cv: ``cv_predictions.csv`` (or its DataFrame): ``label``, ``exam_id``, ``fold`` and score columns.
        confidence, n_resamples, seed: interval level and cluster-bootstrap settings (exams are resampled).
        names: score column -> display name (default :data:`SCORES_COMBINED` when the table has
            ``score_network``, else :data:`SCORES`); the first is compared with the others.

    Returns:
        ``{"n", "n_pos", "n_exams", "folds", "models": [...], "comparisons": [...]}``.
    """
    from medeff.evaluation.bootstrap import cluster_bootstrap
    from medeff.evaluation.roc import delong, delong_paired_test, weighted_auc

    df = pd.read_csv(cv) if not isinstance(cv, pd.DataFrame) else cv
    names = dict(names or (SCORES_COMBINED if "score_network" in df.columns else SCORES))
    cols = [c for c in names if c in df.columns]
    y = df["label"].to_numpy(int).astype(bool)
    groups = df["exam_id"].astype(str).to_numpy()
    s = np.vstack([df[c].to_numpy(float) for c in cols])
    dl = delong(y, s)
    boot = cluster_bootstrap(lambda w: np.vstack([weighted_auc(r, y, w) for r in s]), groups,
                             n_resamples=n_resamples, confidence=confidence, seed=seed)
    models = []
    for i, c in enumerate(cols):
        lo, hi = dl.ci(i, confidence)
        per_fold = [float(delong(y[m], s[i, m]).auc[0]) for m in (df["fold"].to_numpy() == k
                                                                   for k in sorted(df["fold"].unique()))
                    if y[m].any() and (~y[m]).any()]
        models.append({"column": c, "name": names[c], "auc": float(dl.auc[i]), "ci_low": lo, "ci_high": hi,
                       "boot_low": float(boot["low"][i]), "boot_high": float(boot["high"][i]),
                       "fold_auc_mean": float(np.mean(per_fold)) if per_fold else None,
                       "fold_auc_sd": float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else None})
    comps = [{"a": names[cols[0]], "b": names[c], **delong_paired_test(y, s[0], s[i], confidence)}
             for i, c in enumerate(cols) if i > 0]
    return {"n": int(len(df)), "n_pos": int(y.sum()), "n_exams": int(len(np.unique(groups))),
            "folds": int(df["fold"].nunique()), "confidence": confidence, "n_resamples": n_resamples,
            "models": models, "comparisons": comps}


def _fmt(v: float, lo: float, hi: float, digits: int = 3) -> str:
    if v is None or not np.isfinite(v):
        return "not estimable"
    sep = " to " if lo is not None and lo < 0 else "-"  # a difference may be negative: "(-0.04 to 0.01)"
    ci = "" if lo is None or not np.isfinite(lo) else f" ({lo:.{digits}f}{sep}{hi:.{digits}f})"
    return f"{v:.{digits}f}{ci}"


def cv_section(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The cross-validation summary as a report section (``title``, ``paragraphs``, ``tables`` of strings)."""
    pct = f"{round(summary['confidence'] * 100):d}%"
    rows = [[m["name"], _fmt(m["auc"], m["ci_low"], m["ci_high"]), _fmt(m["auc"], m["boot_low"], m["boot_high"]),
             "" if m["fold_auc_mean"] is None else f"{m['fold_auc_mean']:.3f} +- {m['fold_auc_sd'] or 0:.3f}"]
            for m in summary["models"]]
    comp = [[f"{c['a']} - {c['b']}", _fmt(c["difference"], c["ci_low"], c["ci_high"]), f"{c['z']:.2f}",
             f"{c['p']:.3g}"] for c in summary["comparisons"]]
    paras = [
        f"Development data, {summary['folds']}-fold cross-validation split by exam (patient): "
        f"{summary['n']} nodules ({summary['n_pos']} malignant) from {summary['n_exams']} exams. Every nodule is "
        "scored once, by the model trained without its exam; all models use the same folds.",
        "EfficientNet: mean of the slice probabilities of each nodule. Baselines, fitted on the training folds "
        "only: logistic regression on the diameter alone, and on standardised first-order and shape features of "
        "the masked slices (radiomics)." + (
            " Combined recipe: the mean of the logits of EfficientNet and of a feature model (ridge regression of "
            "the malignancy rating on the radiomics features and the diameter, fitted on the training folds only, "
            "mapped to a probability by logistic regression), fixed equal weights; each part is shown alone."
            if any(m["column"] == "score_network" for m in summary["models"]) else ""),
        f"{pct} intervals: DeLong, and a cluster bootstrap resampling exams ({summary['n_resamples']} resamples). "
        "Paired comparison: DeLong test on the same nodules.",
    ]
    tables = [{"caption": "Cross-validation: per-nodule ROC AUC (pooled out-of-fold scores)",
               "headers": ["Model", f"ROC AUC (DeLong {pct} CI)", f"ROC AUC (exam bootstrap {pct} CI)",
                           "Per-fold AUC mean +- SD"], "rows": rows}]
    if comp:
        tables.append({"caption": "Cross-validation: paired DeLong comparison of ROC AUC",
                       "headers": ["Difference", f"Estimate ({pct} CI)", "z", "Two-sided p"], "rows": comp})
    return {"title": "Cross-validation on the development data (model and baselines, same folds)",
            "paragraphs": paras, "tables": tables}


def add_cv_section(results_json: str | Path, cv: str | Path, *, confidence: float = 0.95, n_resamples: int = 1000,
                   seed: int = 0, title: str | None = None) -> dict[str, Any]:
    """Put the cross-validation section into a ``medeff evaluate`` results file (``extra_sections``), in place.

    Returns:
        The cross-validation summary (also stored under ``cross_validation`` in the results).
    """
    from medeff.evaluation.report import load_results, save_results

    res = load_results(results_json)
    summary = cv_summary(cv, confidence=confidence, n_resamples=n_resamples, seed=seed)
    res["cross_validation"] = summary
    res["extra_sections"] = [cv_section(summary)]
    if title:
        res["title"] = title
    save_results(res, results_json, overwrite=True)
    return summary
