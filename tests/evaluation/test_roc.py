"""AUC, DeLong variance and the paired test against independent computations; operating points; CI coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from medeff.evaluation.bootstrap import cluster_bootstrap
from medeff.evaluation.operating_points import (counts_at, metrics_from_counts, threshold_for_sensitivity,
                                                youden_threshold)
from medeff.evaluation.roc import (delong, delong_paired_test, midrank, weighted_auc, weighted_average_precision)


def _brute_force_delong(y, scores_list):
    """Structural components written out pair by pair (DeLong 1988), O(m*n), no ranks."""
    y = np.asarray(y, bool)
    k = len(scores_list)
    m, n = y.sum(), (~y).sum()
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    for r, s in enumerate(scores_list):
        x, z = s[y], s[~y]
        for i in range(m):
            v10[r, i] = sum(1.0 if x[i] > z[j] else 0.5 if x[i] == z[j] else 0.0 for j in range(n)) / n
        for j in range(n):
            v01[r, j] = sum(1.0 if x[i] > z[j] else 0.5 if x[i] == z[j] else 0.0 for i in range(m)) / m
    auc = v10.mean(axis=1)
    s10 = np.zeros((k, k))
    s01 = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            s10[a, b] = ((v10[a] - auc[a]) * (v10[b] - auc[b])).sum() / (m - 1)
            s01[a, b] = ((v01[a] - auc[a]) * (v01[b] - auc[b])).sum() / (n - 1)
    return auc, s10 / m + s01 / n


def _data(rng, n=80, ties=False):
    y = rng.random(n) < 0.4
    s = rng.normal(size=n) + 1.2 * y
    if ties:
        s = np.round(s, 0)
    return y, s


def test_midrank_matches_average_ranks(rng):
    x = np.round(rng.normal(size=200), 1)
    np.testing.assert_allclose(midrank(x), stats.rankdata(x, method="average"))


@pytest.mark.parametrize("ties", [False, True])
def test_auc_equals_mann_whitney(rng, ties):
    y, s = _data(rng, ties=ties)
    u = stats.mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    res = delong(y, s)
    assert res.auc[0] == pytest.approx(u / (y.sum() * (~y).sum()), abs=1e-12)
    assert res.auc[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_delong_covariance_matches_brute_force(rng, ties):
    y, s1 = _data(rng, n=60, ties=ties)
    s2 = s1 + rng.normal(scale=0.8, size=len(s1))
    if ties:
        s2 = np.round(s2)
    res = delong(y, np.vstack([s1, s2]))
    auc, cov = _brute_force_delong(y, [s1, s2])
    np.testing.assert_allclose(res.auc, auc, atol=1e-12)
    np.testing.assert_allclose(res.cov, cov, atol=1e-12)


def test_hanley_mcneil_rating_example():
    # Hanley & McNeil (1982), Radiology 143:29, table 1: CT ratings 1-5 of 58 normal and 51 abnormal patients;
    # the Wilcoxon (trapezoidal) area is 0.893.
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(len(normal)), np.ones(len(abnormal))]
    res = delong(y, np.r_[normal, abnormal].astype(float))
    assert round(float(res.auc[0]), 3) == 0.893
    assert 0.02 < np.sqrt(res.cov[0, 0]) < 0.04  # their SE (0.032) comes from an approximation, DeLong's is close


def test_paired_delong_identical_models_and_against_brute_force(rng):
    y, s = _data(rng, n=50)
    same = delong_paired_test(y, s, s.copy())
    assert same["z"] == 0.0 and same["p"] == 1.0 and same["difference"] == 0.0
    s2 = s + rng.normal(scale=1.5, size=len(s))
    t = delong_paired_test(y, s, s2)
    auc, cov = _brute_force_delong(y, [s, s2])
    z = (auc[0] - auc[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert t["z"] == pytest.approx(z, rel=1e-10)
    assert t["p"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)
    assert t["ci_low"] < t["difference"] < t["ci_high"]


def test_weighted_metrics_equal_repeated_data(rng):
    y, s = _data(rng, n=40, ties=True)
    w = rng.integers(0, 4, size=(3, len(y))).astype(float)
    auc = weighted_auc(s, y, w)
    ap = weighted_average_precision(s, y, w)
    for b in range(3):
        rep = np.repeat(np.arange(len(y)), w[b].astype(int))
        assert auc[b] == pytest.approx(roc_auc_score(y[rep], s[rep]), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(y[rep], s[rep]), abs=1e-12)


def test_threshold_for_target_sensitivity_is_highest_reaching_target(rng):
    y, s = _data(rng, n=120, ties=True)
    for target in (0.8, 0.9, 0.95, 1.0):
        t = threshold_for_sensitivity(s, y, target)
        sens = metrics_from_counts(counts_at(s, y, t))["sensitivity"]
        assert sens >= target - 1e-12
        higher = np.unique(s[s > t])  # every higher candidate threshold misses the target
        assert all(metrics_from_counts(counts_at(s, y, h))["sensitivity"] < target for h in higher)


def test_youden_threshold_maximises_j(rng):
    y, s = _data(rng, n=100)
    t = youden_threshold(s, y)
    j = {c: sum(metrics_from_counts(counts_at(s, y, c))[k] for k in ("sensitivity", "specificity")) - 1
         for c in np.unique(s)}
    assert j[t] == pytest.approx(max(j.values()))


def test_metrics_at_threshold_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.5])
    m = metrics_from_counts(counts_at(s, y, 0.5))  # tp 2, fn 1, fp 2, tn 2
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 4)
    assert m["ppv"] == pytest.approx(2 / 4) and m["npv"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7) and m["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5) / 2)


def test_cluster_bootstrap_resamples_whole_groups(rng):
    groups = np.repeat(np.arange(10), 3)
    seen = []

    def stat(w):
        seen.append(w)
        return w.sum(axis=1)[None, :]

    out = cluster_bootstrap(stat, groups, n_resamples=50, seed=1)
    assert out["estimate"][0] == 30
    w = np.vstack(seen[1:])
    assert np.all(w.reshape(len(w), 10, 3).std(axis=2) == 0)  # rows of one group always share a weight
    assert np.all(w.sum(axis=1) == 30)


@pytest.mark.parametrize("method", ["BCa", "basic", "percentile"])
def test_bootstrap_methods_give_finite_intervals(rng, method):
    y, s = _data(rng, n=60)
    groups = np.repeat(np.arange(30), 2)
    b = cluster_bootstrap(lambda w: weighted_auc(s, y, w)[None, :], groups, n_resamples=300, method=method, seed=0)
    assert np.isfinite(b["low"][0]) and np.isfinite(b["high"][0])
    assert b["low"][0] < b["estimate"][0] < b["high"][0]


def _coverage(n_sets, n_resamples, seed):
    rng = np.random.default_rng(seed)
    d = 1.0
    true_auc = stats.norm.cdf(d / np.sqrt(2))
    hit_dl = hit_bs = 0
    for i in range(n_sets):
        y = np.r_[np.ones(40, bool), np.zeros(60, bool)]
        s = rng.normal(size=100) + d * y
        lo, hi = delong(y, s).ci(0)
        hit_dl += lo <= true_auc <= hi
        b = cluster_bootstrap(lambda w, s=s, y=y: weighted_auc(s, y, w)[None, :], np.arange(100),
                              n_resamples=n_resamples, seed=i)
        hit_bs += b["low"][0] <= true_auc <= b["high"][0]
    return hit_dl / n_sets, hit_bs / n_sets


def test_ci_coverage_near_nominal():
    dl, bs = _coverage(200, 300, 0)
    assert 0.90 <= dl <= 0.99
    assert 0.90 <= bs <= 0.99


@pytest.mark.slow
def test_ci_coverage_near_nominal_large():
    dl, bs = _coverage(1000, 1000, 1)
    assert 0.93 <= dl <= 0.97
    assert 0.92 <= bs <= 0.97
