"""The LIDC triage's feature model and its fixed combination with the network (``combine`` of the pipeline config).

* :func:`feature_scores` - a ridge regression of the consensus malignancy *rating* (1, 2, 4, 5 in
  ``lidc_nodule_slices_64``; the binary label is ``rating >= 4``) on the standardised radiomics features of
  :func:`medeff.pipelines.radiomics.nodule_features` plus the diameter, its output mapped to a probability by a
  logistic regression of the label on the ridge's training predictions. Fitted on the training folds only
  (out-of-fold scores), or on the whole development folder for a test folder.
* :func:`combine_logits` - the shipped score: the mean of the network's and the feature model's logits with fixed
  weights (no extra fitting, so nothing leaks from the validation folds), as a probability.

The rating is read from ``index.csv`` (``malignancy_rating``) of the development folder only; test folders need
the images and ``diameter_mm`` alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from medeff.errors import InputError

__all__ = ["RATING_COLUMN", "nodule_design", "nodule_ratings", "fit_feature_model", "feature_scores",
           "combine_logits", "combine_scores"]

RATING_COLUMN = "malignancy_rating"
_EPS = 1e-6


def nodule_design(arc, nodules: pd.DataFrame) -> np.ndarray:
    """Feature matrix of the feature model, one row per nodule of ``nodules`` (radiomics features + diameter).

    Args:
        arc: the :class:`medeff.pipelines.lidc.SliceArchive` of the folder.
        nodules: :func:`medeff.pipelines.lidc.nodule_table` of the same folder.

    Raises:
        InputError: a nodule lacks ``diameter_mm``.
    """
    from medeff.pipelines.radiomics import nodule_features

    if nodules["diameter_mm"].isna().any():
        raise InputError(f"'{arc.path}': {int(nodules['diameter_mm'].isna().sum())} nodule(s) lack diameter_mm.",
                         hint="the feature model needs index.csv with diameter_mm for every slice.")
    keys, feats, _ = nodule_features(arc.images, arc.keys)
    feats = pd.DataFrame(feats, index=keys).loc[nodules["nodule_key"]].to_numpy()
    return np.column_stack([feats, nodules["diameter_mm"].to_numpy(float)])


def nodule_ratings(arc, nodules: pd.DataFrame) -> np.ndarray:
    """Per-nodule malignancy rating from ``index.csv`` (the first slice's value).

    Raises:
        InputError: ``index.csv`` or its ``malignancy_rating`` column is missing, a value is missing, or the
            ratings disagree with the labels (every malignant nodule must rate above every benign one).
    """
    if arc.table is None or RATING_COLUMN not in arc.table.columns:
        raise InputError(f"'{arc.path}': combine.target=rating needs index.csv with a {RATING_COLUMN} column.",
                         hint="use combine.target=label to fit the feature model on the binary label instead.")
    per = arc.table[RATING_COLUMN].groupby(pd.Series(arc.keys, index=arc.table.index)).first()
    r = nodules["nodule_key"].map(per).to_numpy(float)
    if np.isnan(r).any():
        raise InputError(f"'{arc.path}': {int(np.isnan(r).sum())} nodule(s) lack a {RATING_COLUMN}.",
                         hint="fill the rating of every development nodule, or use combine.target=label.")
    y = nodules["label"].to_numpy(float)
    if (y == 1).any() and (y == 0).any() and r[y == 1].min() <= r[y == 0].max():
        raise InputError(f"'{arc.path}': {RATING_COLUMN} and the labels disagree (a benign nodule rates as high "
                         "as a malignant one).", hint="check index.csv, or use combine.target=label.")
    return r


def fit_feature_model(x: np.ndarray, y: np.ndarray, target: np.ndarray, *, alpha: float = 10.0):
    """Fit ridge(standardised x -> target) and the logistic map of its output to P(label = 1).

    Returns:
        A function ``x -> probability``.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ridge = make_pipeline(StandardScaler(), Ridge(alpha=float(alpha))).fit(x, target)
    link = LogisticRegression(max_iter=2000).fit(ridge.predict(x)[:, None], y)
    return lambda z: link.predict_proba(ridge.predict(z)[:, None])[:, 1]


def feature_scores(x: np.ndarray, y: np.ndarray, target: np.ndarray, folds: np.ndarray, *,
                   alpha: float = 10.0) -> np.ndarray:
    """Out-of-fold probabilities of the feature model: fold k is scored by the model fitted on the other folds."""
    out = np.full(len(y), np.nan)
    for k in np.unique(folds):
        test = folds == k
        out[test] = fit_feature_model(x[~test], y[~test], target[~test], alpha=alpha)(x[test])
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def combine_logits(scores: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """``sigmoid(sum_i w_i logit(p_i) / sum_i w_i)``: a fixed weighted mean of probabilities on the logit scale.

    Raises:
        InputError: a weight names no score, or the weights do not sum to a positive number.
    """
    unknown = sorted(set(weights) - set(scores))
    total = float(sum(weights.values()))
    if unknown or total <= 0:
        raise InputError(f"combine.weights {dict(weights)} must name scores among {sorted(scores)} with a positive "
                         "sum.", hint="e.g. combine.weights={network: 0.5, features: 0.5}.")
    z = sum(float(w) * _logit(scores[name]) for name, w in weights.items()) / total
    return 1.0 / (1.0 + np.exp(-z))


def combine_scores(arc, cv: pd.DataFrame, test_arc, test: pd.DataFrame,
                   combine: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature-model scores (out-of-fold and test) and the fixed logit mean with the network's.

    Args:
        arc, cv: the development archive and its out-of-fold table (``fold``, ``label``, ``diameter_mm``, the
            network's ``score_model``).
        test_arc, test: the test archive and its nodule table with the network's ``probability_malignant``.
        combine: ``target`` (rating | label), ``alpha`` (ridge strength), ``weights`` (network, features).

    Returns:
        ``(cv, test)`` copies: ``score_model`` / ``probability_malignant`` become the combined score, the parts
        are kept as ``score_network``, ``score_features`` / ``probability_network``, ``probability_features``.
    """
    from medeff.utils.options import look_up

    target = look_up(str(combine.get("target", "rating")), ("rating", "label"), what="feature-model target",
                     key="combine.target")
    alpha = float(combine.get("alpha", 10.0))
    weights = dict(combine.get("weights") or {"network": 0.5, "features": 0.5})
    nod = cv.copy()
    x = nodule_design(arc, nod)
    y = nod["label"].to_numpy(int)
    t = nodule_ratings(arc, nod) if target == "rating" else y.astype(float)
    nod["score_network"] = nod["score_model"]
    nod["score_features"] = feature_scores(x, y, t, nod["fold"].to_numpy(), alpha=alpha)
    nod["score_model"] = combine_logits({"network": nod["score_network"].to_numpy(float),
                                            "features": nod["score_features"].to_numpy(float)}, weights)
    model = fit_feature_model(x, y, t, alpha=alpha)
    test = test.copy()
    test["probability_network"] = test["probability_malignant"]
    test["probability_features"] = model(nodule_design(test_arc, test))
    test["probability_malignant"] = combine_logits(
        {"network": test["probability_network"].to_numpy(float),
         "features": test["probability_features"].to_numpy(float)}, weights)
    return nod, test
