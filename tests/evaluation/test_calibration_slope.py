"""Calibration slope and intercept: known logistic models, over-confidence, agreement with an unpenalised fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medeff.evaluation import evaluate_classification, render_report
from medeff.evaluation.calibration import logit, weighted_recalibration


def _cohort(n: int, seed: int, sharpen: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lp = rng.normal(-0.3, 1.5, n)  # true log-odds
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-lp))
    prob = 1.0 / (1.0 + np.exp(-sharpen * lp))  # sharpen=2: over-confident probabilities
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "label": y.astype(int), "score": prob})


def _head(res: dict) -> dict:
    return {r["key"]: r for r in res["headline"]}


def test_well_calibrated_probabilities_give_slope_one_intercept_zero():
    res = evaluate_classification(_cohort(3000, 0), n_resamples=200)
    h = _head(res)
    slope, icpt = h["calibration_slope"], h["calibration_intercept"]
    assert slope["value"] == pytest.approx(1.0, abs=0.1)
    assert icpt["value"] == pytest.approx(0.0, abs=0.1)
    assert slope["ci_low"] < 1.0 < slope["ci_high"]
    assert icpt["ci_low"] < 0.0 < icpt["ci_high"]
    assert "cluster bootstrap" in slope["ci_method"]


def test_over_confident_probabilities_give_slope_one_half():
    res = evaluate_classification(_cohort(3000, 1, sharpen=2.0), n_resamples=100)
    h = _head(res)
    assert h["calibration_slope"]["value"] == pytest.approx(0.5, abs=0.06)
    assert h["calibration_slope"]["ci_high"] < 0.8


def test_slope_matches_unpenalised_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    df = _cohort(800, 2, sharpen=1.5)
    x = logit(df["score"].to_numpy())[:, None]
    try:
        fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x, df["label"])
    except ValueError:  # older scikit-learn: no penalty via C=inf
        fit = LogisticRegression(penalty=None, tol=1e-10, max_iter=1000).fit(x, df["label"])
    got = weighted_recalibration(df["score"].to_numpy(), df["label"].to_numpy(), np.ones(len(df)))
    assert got[0, 0] == pytest.approx(fit.coef_[0, 0], rel=1e-5)
    # calibration-in-the-large: with the slope fixed at 1, the mean predicted risk after recalibration equals the
    # observed event rate (the score equation of the intercept)
    p = 1.0 / (1.0 + np.exp(-(got[1, 0] + x[:, 0])))
    assert p.mean() == pytest.approx(df["label"].mean(), abs=1e-8)


def test_separation_is_not_estimable_not_a_number():
    out = weighted_recalibration(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]), np.ones((1, 4)))
    assert np.isnan(out[0, 0])


def test_report_keeps_reliability_diagram_and_shows_slope(tmp_path):
    res = evaluate_classification(_cohort(300, 3), n_resamples=50)
    render_report(res, tmp_path, formats=["html"])
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Calibration slope" in html and "calibration-in-the-large" in html
    assert "Reliability diagram" in html
