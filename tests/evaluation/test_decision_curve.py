"""Decision-curve analysis: net benefit against a hand computation, treat-all/none, CIs, report section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medeff.errors import ConfigError
from medeff.evaluation import evaluate_classification, render_report
from medeff.evaluation.decision_curve import threshold_grid, weighted_net_benefit


def _toy() -> pd.DataFrame:
    # 10 cases: at pt = 0.25, positives (score >= 0.25) are cases 3..9 -> TP = 4 (cases 6..9), FP = 3 (cases 3..5)
    scores = [0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.6, 0.7, 0.8, 0.9]
    labels = [0, 0, 1, 0, 0, 0, 1, 1, 1, 1]
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(10)], "label": labels, "score": scores})


def test_net_benefit_matches_hand_computation():
    df = _toy()
    res = evaluate_classification(df, n_resamples=50, decision_curve={"threshold_min": 0.05, "threshold_max": 0.5,
                                                                      "threshold_step": 0.05})
    pts = {round(p["threshold"], 4): p for p in res["decision_curve"]}
    p = pts[0.25]
    # NB = TP/n - FP/n * pt/(1-pt) = 4/10 - 3/10 * (0.25/0.75) = 0.4 - 0.1 = 0.3
    assert p["net_benefit"] == pytest.approx(0.3)
    # treat all: prevalence 0.5 -> 0.5 - 0.5 * 1/3
    assert p["net_benefit_treat_all"] == pytest.approx(0.5 - 0.5 / 3)
    assert p["net_benefit_treat_none"] == 0.0
    # pt = 0.5: TP = 4, FP = 0 (scores >= 0.5 are cases 6..9, all positive) -> 0.4; treat all 0.5 - 0.5 = 0
    assert pts[0.5]["net_benefit"] == pytest.approx(0.4)
    assert pts[0.5]["net_benefit_treat_all"] == pytest.approx(0.0)
    assert len(res["decision_curve"]) == 10
    for q in res["decision_curve"]:
        assert q["net_benefit_ci_low"] <= q["net_benefit"] + 1e-12 <= q["net_benefit_ci_high"] + 2e-12
    assert "cluster bootstrap" in res["decision_curve_settings"]["ci_method"]


def test_weighted_net_benefit_uses_case_weights():
    df = _toy()
    w = np.ones((1, 10))
    w[0, 6] = 3.0  # case 6 (positive, score 0.6) drawn three times: n = 12, TP = 6 at pt = 0.25
    out = weighted_net_benefit(df["score"].to_numpy(), df["label"].to_numpy(), w, np.array([0.25]))
    assert out[0, 0] == pytest.approx(6 / 12 - 3 / 12 / 3)
    assert out[1, 0] == pytest.approx(7 / 12 - 5 / 12 / 3)


@pytest.mark.parametrize("spec", [{"threshold_min": 0.0}, {"threshold_max": 1.0}, {"threshold_step": 0},
                                  {"threshold_min": 0.6, "threshold_max": 0.5}, {"thresholds": 3}])
def test_bad_threshold_range_is_refused(spec):
    with pytest.raises(ConfigError, match="decision_curve"):
        threshold_grid(spec)


def test_logit_scores_have_no_decision_curve():
    df = _toy().assign(score=lambda d: (d["score"] - 0.5) * 8)
    res = evaluate_classification(df, n_resamples=20)
    assert "decision_curve" not in res


def test_report_has_decision_curve_table_and_figure(tmp_path):
    res = evaluate_classification(_toy(), n_resamples=30)
    render_report(res, tmp_path, formats=["html", "csv"])
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Decision curve" in html and "Treat all" in html
    assert "Decision curve: net benefit of the model" in html  # the figure caption
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert (metrics["section"] == "decision_curve").sum() == 2 * 50
