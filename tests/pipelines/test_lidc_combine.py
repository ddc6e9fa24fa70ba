"""The LIDC feature model (ridge on the rating) and its fixed logit combination with the network
(medeff.pipelines.lidc_combine)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medeff.errors import InputError
from medeff.pipelines import lidc_combine as lc
from medeff.pipelines.lidc import SliceArchive


def test_combine_logits_is_a_weighted_logit_mean():
    a, b = np.array([0.9, 0.5, 0.2]), np.array([0.1, 0.5, 0.2])
    out = lc.combine_logits({"network": a, "features": b}, {"network": 0.5, "features": 0.5})
    np.testing.assert_allclose(out, [0.5, 0.5, 0.2])
    np.testing.assert_allclose(lc.combine_logits({"network": a, "features": b}, {"network": 1.0}), a)
    with pytest.raises(InputError, match="combine.weights"):
        lc.combine_logits({"network": a}, {"net": 1.0})
    with pytest.raises(InputError, match="combine.weights"):
        lc.combine_logits({"network": a}, {"network": 0.0})


def test_feature_scores_use_the_training_folds_only():
    rng = np.random.default_rng(0)
    n = 120
    x = rng.normal(size=(n, 4))
    rating = np.clip(np.round(3 + 1.5 * x[:, 0] + rng.normal(size=n)), 1, 5)
    rating[rating == 3] = 4
    y = (rating >= 4).astype(int)
    folds = np.arange(n) % 3
    base = lc.feature_scores(x, y, rating, folds)
    assert np.all((base > 0) & (base < 1))
    # change the targets of fold 0: its own out-of-fold scores stay, the others move
    r2 = rating.copy()
    r2[folds == 0] = 6 - r2[folds == 0]
    y2 = (r2 >= 4).astype(int)
    moved = lc.feature_scores(x, y2, r2, folds)
    np.testing.assert_allclose(moved[folds == 0], base[folds == 0])
    assert not np.allclose(moved[folds != 0], base[folds != 0])


def _archive(ratings, labels, with_column=True):
    keys = np.array([f"e{i}/1" for i in range(len(ratings))])
    table = pd.DataFrame({"diameter_mm": np.arange(len(keys), dtype=float) + 3})
    if with_column:
        table["malignancy_rating"] = ratings
    arc = SliceArchive(np.zeros((len(keys), 8, 8), np.uint8), keys, np.zeros(len(keys), int),
                       np.asarray(labels), table, path="x/nodule_slices_64x64.npz")
    nod = pd.DataFrame({"nodule_key": keys, "label": labels, "diameter_mm": table["diameter_mm"]})
    return arc, nod


def test_nodule_ratings_checks_the_column_and_the_labels():
    arc, nod = _archive([1, 2, 4, 5], [0, 0, 1, 1])
    np.testing.assert_array_equal(lc.nodule_ratings(arc, nod), [1, 2, 4, 5])
    arc, nod = _archive([1, 4, 2, 5], [0, 0, 1, 1])
    with pytest.raises(InputError, match="disagree"):
        lc.nodule_ratings(arc, nod)
    arc, nod = _archive([1, 2, 4, 5], [0, 0, 1, 1], with_column=False)
    with pytest.raises(InputError, match="combine.target=label"):
        lc.nodule_ratings(arc, nod)
