"""Bootstrap intervals of bounded measures stay in the measure's range (clipping is recorded), and the method
actually used for each interval (e.g. a percentile fallback from BCa) is recorded in the results and the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medeff.evaluation import evaluate_classification, evaluate_segmentation, render_report, save_results
from medeff.evaluation.bootstrap import cluster_bootstrap


def _near_perfect(n_pos=12, n_neg=30, seed=1) -> pd.DataFrame:
    """Scores separating the classes almost perfectly: AUC and sensitivity near 1, where basic intervals overshoot."""
    rng = np.random.default_rng(seed)
    pos = np.r_[rng.uniform(0.7, 1.0, n_pos - 1), 0.45]  # one positive below the 0.5 threshold
    neg = np.r_[rng.uniform(0.0, 0.4, n_neg - 1), 0.8]
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(n_pos + n_neg)], "label": [1] * n_pos + [0] * n_neg,
                         "score": np.r_[pos, neg]})


def _records(res: dict):
    yield from res["headline"]
    for op in res["operating_points"]:
        yield from op["metrics"]


def test_basic_intervals_of_bounded_measures_stay_in_unit_range(tmp_path):
    res = evaluate_classification(_near_perfect(), bootstrap_method="basic", n_resamples=400, seed=0)
    unbounded = {"calibration_slope", "calibration_intercept"}  # logistic-recalibration coefficients: any real
    recs = [r for r in _records(res) if r["ci_low"] is not None and r["key"] not in unbounded]
    assert recs
    for r in recs:
        assert 0.0 <= r["ci_low"] <= r["ci_high"] <= 1.0, (r["key"], r["ci_low"], r["ci_high"])
    clipped = [r for r in recs if r.get("ci_clipped")]
    assert clipped, "the basic method overshoots 1 on these data; the clip must be recorded"
    assert all("clipped to [0, 1]" in r["ci_method"] for r in clipped)
    assert all(r["ci_method_used"] == "basic" for r in clipped)
    html = render_report(res, tmp_path, formats=("html", "csv"))
    text = html["report.html"].read_text(encoding="utf-8")
    assert "Confidence interval notes" in text and "clipped to [0, 1]" in text
    metrics = pd.read_csv(html["metrics.csv"])
    bounded = metrics[~metrics["key"].isin(unbounded) & metrics["section"].isin(["headline", "operating_point"])]
    assert bounded["ci_high"].max() <= 1.0 and bounded["ci_clipped"].astype(str).eq("True").any()


def test_cluster_bootstrap_clips_and_records_per_component():
    y = np.r_[np.ones(8), np.zeros(2)]

    def stat(w):  # the mean of y (bounded by 1) and the same number unbounded
        m = (w @ y) / w.sum(axis=1)
        return np.vstack([m, m])

    boot = cluster_bootstrap(stat, np.arange(10), n_resamples=300, method="basic", seed=0,
                             bounds=[(0.0, 1.0), None])
    assert boot["high"][0] <= 1.0 < boot["high"][1]
    assert list(boot["clipped"]) == [True, False] and boot["method_used"] == ["basic", "basic"]


def test_bca_fallback_to_percentile_is_recorded(tmp_path):
    """Three positive patients among 40: some resamples draw none, so BCa is undefined for the sensitivity; the
    percentile interval of the valid resamples is reported, and the results and the report say so."""
    df = _near_perfect(n_pos=3, n_neg=37, seed=4)
    res = evaluate_classification(df, bootstrap_method="BCa", n_resamples=300, seed=0)
    sens = next(m for m in res["operating_points"][0]["metrics"] if m["key"] == "sensitivity")
    assert sens["ci_method_used"].startswith("percentile (BCa undefined:")
    assert "resamples NaN" in sens["ci_method_used"] and sens["ci_method_used"] in sens["ci_method"]
    save_results(res, tmp_path / "results.json")
    stored = json.loads((tmp_path / "results.json").read_text())
    stored_sens = next(m for m in stored["operating_points"][0]["metrics"] if m["key"] == "sensitivity")
    assert stored_sens["ci_method_used"] == sens["ci_method_used"]
    spec = next(m for m in res["operating_points"][0]["metrics"] if m["key"] == "specificity")
    assert spec["ci_method_used"] == "BCa"  # defined in every resample: BCa as configured
    html = render_report(res, tmp_path / "rep", formats=("html",))["report.html"].read_text(encoding="utf-8")
    assert "percentile (BCa undefined:" in html


def test_segmentation_basic_intervals_are_bounded(tmp_path):
    from medeff.io import write_image
    from medeff.io.base import ImageData

    rows = []
    for i in range(8):
        ref = np.zeros((16, 16, 8), np.uint8)
        ref[3:12, 3:12, 2:6] = 1
        pred = ref.copy()
        if i == 0:
            pred[3:8, 3:12, 2:6] = 0  # one poor case among perfect ones: the basic interval overshoots 1
        for name, arr in (("pred", pred), ("ref", ref)):
            write_image(ImageData(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3)), tmp_path / f"{name}{i}.nrrd")
        rows.append({"case_id": f"k{i}", "prediction": f"pred{i}.nrrd", "reference": f"ref{i}.nrrd"})
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    res = evaluate_segmentation(tmp_path / "index.csv", bootstrap_method="basic", n_resamples=300)
    dice = next(m for m in res["aggregates"][0]["metrics"] if m["key"] == "dice")
    assert dice["ci_high"] <= 1.0 and dice["ci_clipped"] and "clipped to [0, 1]" in dice["ci_method"]
    hd = next(m for m in res["aggregates"][0]["metrics"] if m["key"] == "hd95")
    assert hd["ci_low"] >= 0.0


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_defined_intervals_keep_the_configured_method(method):
    res = evaluate_classification(_near_perfect(n_pos=20, n_neg=20), bootstrap_method=method, n_resamples=200)
    auc = next(r for r in res["headline"] if r["key"] == "auc_bootstrap")
    assert auc["ci_method_used"] == method and not auc["ci_clipped"]
