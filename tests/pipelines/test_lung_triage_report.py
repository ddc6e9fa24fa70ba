"""The triage report when ROC analysis is impossible: a one-class reference (all tumours malignant) or no labels
give a listing with a clear statement instead of an error; references join from a second CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medeff.errors import InputError
from medeff.evaluation import evaluate_classification, render_report

PREDS = pd.DataFrame({"case_id": ["n1", "n2", "n3", "n4"], "score": [0.9, 0.2, 0.6, 0.55]})


def test_one_class_reference_reports_sensitivity_and_no_auc(tmp_path):
    refs = pd.DataFrame({"case_id": ["n1", "n2", "n3", "n4"], "label": ["malignant"] * 4,
                         "patient_id": ["a", "a", "b", "c"]})
    res = evaluate_classification(PREDS, references=refs, positive_label="malignant", unit="nodule",
                                  columns={"group": "patient_id"}, threshold=0.5, n_resamples=200)
    assert res["triage_only"] and "one class only (4 positive, 0 negative nodules)" in res["statement"]
    head = {h["key"]: h for h in res["headline"]}
    assert head["sensitivity"]["value"] == pytest.approx(0.75) and head["flagged"]["value"] == 3
    assert head["auc"]["value"] is None
    assert [r["decision"] for r in res["per_case"]] == ["flag", "routine", "flag", "flag"]
    render_report(res, tmp_path, ("html", "json", "csv"))
    html = (tmp_path / "report.html").read_text()
    assert "one class only" in html and "Triage decisions" in html


def test_all_negative_reference_reports_specificity():
    refs = pd.DataFrame({"case_id": PREDS["case_id"], "label": ["benign"] * 4})
    res = evaluate_classification(PREDS, references=refs, positive_label="malignant", threshold=0.5, n_resamples=50)
    head = {h["key"]: h for h in res["headline"]}
    assert head["specificity"]["value"] == pytest.approx(0.25)
    assert "0 positive, 4 negative" in res["statement"]


def test_unlabelled_input_is_listed(tmp_path):
    res = evaluate_classification(PREDS, columns={"label": None}, threshold=0.5, n_resamples=50)
    assert res["triage_only"] and "No reference labels" in res["statement"]
    assert res["counts"]["positive"] is None and np.isclose(res["headline"][0]["value"], 3)
    render_report(res, tmp_path, ("html", "pdf", "json", "csv"))
    assert "No reference labels" in (tmp_path / "report.html").read_text()


def test_partly_missing_labels_and_missing_references_are_errors():
    refs = pd.DataFrame({"case_id": PREDS["case_id"], "label": ["malignant", "", "benign", "benign"]})
    with pytest.raises(InputError, match="1 of 4 cases have no reference label"):
        evaluate_classification(PREDS, references=refs, positive_label="malignant", n_resamples=20)
    with pytest.raises(InputError, match="have no row in References"):
        evaluate_classification(PREDS, references=refs.iloc[:2], positive_label="malignant", n_resamples=20)
