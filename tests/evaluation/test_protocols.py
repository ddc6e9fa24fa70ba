"""Split protocols side by side: metrics with cluster-bootstrap intervals over groups, paired differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medeff.errors import InputError
from medeff.evaluation.protocols import compare_protocols, metric_names, paired_difference, protocol_metrics

CLASSES = ["normal", "benign", "malignant"]


def _onehot(pred, k=3, p=0.8):
    out = np.full((len(pred), k), (1 - p) / (k - 1))
    out[np.arange(len(pred)), pred] = p
    return out


def test_protocol_metrics_values_and_intervals():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    groups = [f"g{i // 2}" for i in range(10)]
    r = protocol_metrics(y, _onehot(pred), groups, CLASSES, n_resamples=200)
    m = r["metrics"]
    assert list(m) == metric_names(CLASSES)
    assert m["accuracy"]["value"] == pytest.approx(0.8)
    assert m["sensitivity_normal"]["value"] == pytest.approx(0.75)
    assert m["sensitivity_benign"]["value"] == pytest.approx(1.0)
    assert m["specificity_normal"]["value"] == pytest.approx(5 / 6, abs=1e-4)
    assert m["balanced_accuracy"]["value"] == pytest.approx((0.75 + 1.0 + 0.75) / 3, abs=1e-4)
    assert r["confusion"] == [[3, 1, 0], [0, 2, 0], [1, 0, 3]] and r["n_groups"] == 5
    assert m["accuracy"]["ci_low"] < 0.8 < m["accuracy"]["ci_high"]
    # groups matter: the same data with every image its own group give a narrower interval
    one = protocol_metrics(y, _onehot(pred), [str(i) for i in range(10)], CLASSES, n_resamples=200)["metrics"]
    copies = protocol_metrics(np.repeat(y, 5), _onehot(np.repeat(pred, 5)), np.repeat(groups, 5), CLASSES,
                              n_resamples=200)["metrics"]
    naive = protocol_metrics(np.repeat(y, 5), _onehot(np.repeat(pred, 5)), [str(i) for i in range(50)], CLASSES,
                             n_resamples=200)["metrics"]
    width = lambda rec: rec["ci_high"] - rec["ci_low"]  # noqa: E731
    assert width(naive["accuracy"]) < width(copies["accuracy"])  # copies of one group are not new evidence
    assert one["accuracy"]["value"] == copies["accuracy"]["value"]


def test_paired_difference_is_zero_for_the_same_model_and_signed():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    good, bad = _onehot(y), _onehot((y + (rng.random(60) < 0.5)) % 3)
    groups = [str(i // 3) for i in range(60)]
    same = paired_difference(y, good, good, groups, n_resamples=200)
    assert all(v["value"] == 0 and v["ci_low"] == 0 and v["ci_high"] == 0 for v in same.values())
    d = paired_difference(y, good, bad, groups, n_resamples=200)
    assert d["accuracy"]["value"] > 0.3 and d["accuracy"]["ci_low"] > 0


def test_compare_protocols_table():
    rng = np.random.default_rng(1)
    rows = []
    for protocol in ("published", "patient_safe"):
        y = rng.integers(0, 3, 30)
        for model, flip in (("knn", 0.1), ("effnet", 0.3)):
            p = _onehot(np.where(rng.random(30) < flip, (y + 1) % 3, y))
            d = pd.DataFrame({"file": [f"f{i}.jpg" for i in range(30)], "protocol": protocol, "model": model,
                              "label": y, "group": [f"g{i // 2}" for i in range(30)]})
            for c, name in enumerate(CLASSES):
                d[f"prob_{name}"] = p[:, c]
            rows.append(d.sample(frac=1.0, random_state=0))  # row order does not matter
    table = pd.concat(rows)
    res = compare_protocols(table, CLASSES, reference_model="knn", n_resamples=100)
    assert set(res["protocols"]) == {"published", "patient_safe"}
    for part in res["protocols"].values():
        assert set(part["models"]) == {"knn", "effnet"} and part["models"]["knn"]["n"] == 30
        assert set(part["paired"]) == {"effnet"} and part["paired"]["effnet"]["versus"] == "knn"
        acc = {m: part["models"][m]["metrics"]["accuracy"]["value"] for m in ("knn", "effnet")}
        assert part["paired"]["effnet"]["accuracy"]["value"] == pytest.approx(acc["effnet"] - acc["knn"], abs=1e-4)
    with pytest.raises(InputError, match="different test images"):
        bad = table.copy()
        bad.loc[(bad["model"] == "effnet") & (bad["file"] == "f0.jpg"), "file"] = "other.jpg"
        compare_protocols(bad, CLASSES, reference_model="knn", n_resamples=10)
    with pytest.raises(InputError, match="lacks column"):
        compare_protocols(table.drop(columns=["group"]), CLASSES)


def test_protocol_report_refuses_predictions_that_miss_test_images(tmp_path):
    from medeff.errors import ConfigError
    from medeff.evaluation.protocol_report import protocol_report, protocols_config

    split = tmp_path / "split"
    split.mkdir()
    lines = ["case_id,file,label,class_name,group,split,protocol"]
    lines += [f"c{i},img {i}.png,{i % 3},{CLASSES[i % 3]},g{i // 2},{'test' if i < 6 else 'train'},random"
              for i in range(12)]
    (split / "splits.csv").write_text("\n".join(lines) + "\n")
    pred = tmp_path / "pred.csv"
    rows = ["case_id,p_normal,p_benign,p_malignant"] + [f"c{i},0.8,0.1,0.1" for i in range(6)]
    pred.write_text("\n".join(rows) + "\n")
    cfg = protocols_config([f"splits=['published:{split}']", f"inputs=['published:m:{pred}']", "reference_model=null",
                            "bootstrap.n_resamples=20"])
    res = protocol_report(tmp_path / "out", cfg)
    m = res["protocols"]["published"]["models"]["m"]
    assert m["n"] == 6 and m["metrics"]["accuracy"]["value"] == pytest.approx(2 / 6, abs=1e-4)
    assert res["class_names"] == CLASSES
    pred.write_text("\n".join(rows[:-1]) + "\n")  # one test image unpredicted
    with pytest.raises(InputError, match="1 test image"):
        protocol_report(tmp_path / "out2", cfg)
    with pytest.raises(ConfigError, match="PROTOCOL:MODEL:PREDICTIONS"):
        protocol_report(tmp_path / "out3", protocols_config([f"splits=['published:{split}']", "inputs=['m']"]))


def _scores(seed=0, n=60):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n // 3)
    a = rng.dirichlet([1, 1, 1], size=n) + np.eye(3)[y] * 0.8
    b = rng.dirichlet([1, 1, 1], size=n) + np.eye(3)[y] * 0.3
    return y, a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)


def test_ovr_delong_one_class_is_delong():
    from medeff.evaluation.protocols import ovr_delong
    from medeff.evaluation.roc import delong, delong_paired_test

    y, a, b = _scores()
    r = ovr_delong(y, {"a": a, "b": b}, CLASSES)
    ref = delong(y == 2, a[:, 2])
    assert r["models"]["a"]["malignant"]["auc"] == pytest.approx(ref.auc[0], abs=1e-4)
    lo, hi = ref.ci(0)
    assert (r["models"]["a"]["malignant"]["ci_low"], r["models"]["a"]["malignant"]["ci_high"]) == \
        pytest.approx((lo, hi), abs=1e-4)
    test = delong_paired_test(y == 2, a[:, 2], b[:, 2])
    row = next(p for p in r["paired"] if p["auc"] == "malignant")
    assert (row["a"], row["b"]) == ("a", "b")
    assert row["p"] == pytest.approx(test["p"], rel=1e-3) and row["difference"] == pytest.approx(test["difference"],
                                                                                                  abs=1e-4)
    macro = r["models"]["a"]["macro"]
    per_class = [delong(y == c, a[:, c]).auc[0] for c in range(3)]
    assert macro["auc"] == pytest.approx(np.mean(per_class), abs=1e-4)
    assert macro["ci_low"] < macro["auc"] < macro["ci_high"]
    assert next(p for p in r["paired"] if p["auc"] == "macro")["p"] < 0.05  # a is clearly the better model


def test_ovr_delong_clustered_counts_copies_once():
    from medeff.evaluation.protocols import ovr_delong

    y, a, b = _scores(1, n=30)
    single = ovr_delong(y, {"a": a, "b": b}, CLASSES, groups=list(range(30)))
    m = single["models"]["a"]["macro"]
    assert (m["clustered_ci_low"], m["clustered_ci_high"]) == pytest.approx((m["ci_low"], m["ci_high"]), abs=2e-3)
    # every image twice, each pair one group: image-level DeLong narrows (it believes in 60 images), the clustered
    # interval stays near the 30-image one
    y2, a2, b2 = np.repeat(y, 2), np.repeat(a, 2, axis=0), np.repeat(b, 2, axis=0)
    twice = ovr_delong(y2, {"a": a2, "b": b2}, CLASSES, groups=np.repeat(np.arange(30), 2))
    t = twice["models"]["a"]["macro"]
    width = lambda lo, hi: hi - lo  # noqa: E731
    assert width(t["ci_low"], t["ci_high"]) < 0.8 * width(m["ci_low"], m["ci_high"])
    assert width(t["clustered_ci_low"], t["clustered_ci_high"]) == pytest.approx(
        width(m["ci_low"], m["ci_high"]), rel=0.1)
    pm = next(p for p in twice["paired"] if p["auc"] == "macro")
    assert pm["clustered_p"] > pm["p"]


def test_compare_protocols_reports_delong_for_all_models():
    y, a, b = _scores(2, n=30)
    rows = []
    for name, prob in (("net", a), ("knn", b)):
        for i in range(30):
            rows.append({"file": f"f{i}", "protocol": "p", "model": name, "label": int(y[i]), "group": f"g{i // 3}",
                         **{f"prob_{c}": prob[i, j] for j, c in enumerate(CLASSES)}})
    out = compare_protocols(pd.DataFrame(rows), CLASSES, reference_model="knn", n_resamples=50)
    d = out["protocols"]["p"]["delong"]
    assert set(d["models"]) == {"net", "knn"} and d["n_groups"] == 10
    assert {p["auc"] for p in d["paired"]} == {"macro", *CLASSES}


def test_report_shows_the_delong_tables():
    from medeff.evaluation.protocol_report import _delong_html
    from medeff.evaluation.protocols import ovr_delong

    y, a, b = _scores(3, n=30)
    d = ovr_delong(y, {"net": a, "knn": b}, CLASSES, groups=[i // 3 for i in range(30)])
    text = "".join(_delong_html(d, CLASSES))
    assert "Paired DeLong tests" in text and "(clustered)" in text and "10 groups" in text
    assert f"{d['models']['net']['macro']['auc']:.3f}" in text
    assert _delong_html(None, CLASSES) == []


def test_margin_over_the_lookup_in_plain_words():
    from medeff.evaluation.protocol_report import _macro_delong_vs, margin_in_words

    def diff(v, lo, hi):
        return {"accuracy": {"value": v, "ci_low": lo, "ci_high": hi}}

    assert "does better than knn" in margin_in_words("net", diff(0.2, 0.05, 0.4), "knn")
    assert "does worse than knn" in margin_in_words("net", diff(-0.2, -0.4, -0.05), "knn")
    text = margin_in_words("net", diff(0.218, -0.038, 0.464), "knn")
    assert "cannot be told apart from knn" in text and "+21.8 points (95% CI -3.8 to +46.4)" in text
    y, a, b = _scores(4, n=30)
    out = compare_protocols(pd.DataFrame([
        {"file": f"f{i}", "protocol": "p", "model": name, "label": int(y[i]), "group": f"g{i // 3}",
         **{f"prob_{c}": prob[i, j] for j, c in enumerate(CLASSES)}}
        for name, prob in (("net", a), ("knn", b)) for i in range(30)]), CLASSES, reference_model="knn",
        n_resamples=50)["protocols"]["p"]
    auc = _macro_delong_vs(out["delong"], "net", "knn")
    words = margin_in_words("net", out["paired"]["net"], "knn", auc)
    net, knn = (out["delong"]["models"][m]["macro"]["auc"] for m in ("net", "knn"))
    assert f"macro AUC {net - knn:+.3f}" in words and "clustered" not in words and "as clusters p =" in words
