"""Text outside Latin-1 reaches the PDF report (embedded TrueType fonts; a visible [U+XXXX] marker where no installed
font has the glyph), and reference labels differing only in case are one class (merged, logged, reported)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from medeff.errors import InputError
from medeff.evaluation import evaluate_classification, render_report
from medeff.evaluation.fonts import drawable

SITES = ["Москва", "東京", "Zürich", "Αθήνα"]


def _df(n=48, seed=0, labels=("malignant", "benign")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3 == 0
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(n)],
                         "label": np.where(y, labels[0], labels[1]),
                         "score": np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1),
                         "site": [SITES[i % len(SITES)] for i in range(n)]})


def test_pdf_shows_non_latin1_title_subgroups_and_model_name(tmp_path, pdf_text, caplog):
    title = "肺結節の評価 — Ωmega"
    res = evaluate_classification(_df(), positive_label="malignant", subgroups=[{"column": "site"}],
                                  columns={"model_name": "Модель"}, title=title, n_resamples=50)
    with caplog.at_level(logging.WARNING, logger="medeff.evaluation.fonts"):
        written = render_report(res, tmp_path, formats=("pdf", "html"))
    text = pdf_text(written["report.pdf"].read_bytes())
    assert "Sensitivity" in text and "Provenance" in text  # the extraction reads the pages
    assert "??" not in text
    for word in ("Москва", "Zürich", "Αθήνα", "Ωmega"):
        assert word in text, word
    assert "Модель" in text  # the summary names the model (figures are images; their text is checked in the HTML)
    # CJK: drawn when a CJK font is installed, else each character is a visible [U+XXXX] marker (and logged)
    tokyo, kanji_title = drawable("東京"), drawable(title)
    assert tokyo in text and kanji_title in text
    if tokyo != "東京":
        assert tokyo == "[U+6771][U+4EAC]" and "[U+XXXX]" in caplog.text
    html = written["report.html"].read_text(encoding="utf-8")
    assert "東京" in html and title in html  # the HTML shows every character as given


def test_latin1_report_keeps_standard_pdf_fonts(tmp_path, pdf_text):
    """Plain strings, as before: small files, and any text search (e.g. for identifiers) sees the words as stored."""
    res = evaluate_classification(_df().assign(site=["Zürich", "Genève"] * 24), positive_label="malignant",
                                  subgroups=[{"column": "site"}], n_resamples=50)
    data = render_report(res, tmp_path, formats=("pdf",))["report.pdf"].read_bytes()
    assert b"/Helvetica" in data and b"/Courier" in data and b"DejaVuSans" not in data
    text = pdf_text(data)
    assert "Zürich" in text and "Genève" in text and "Sensitivity (true-positive rate)" in text


def test_labels_differing_in_case_are_one_class(tmp_path, caplog):
    df = _df(labels=("malignant", "benign"))
    df.loc[df.index[::4], "label"] = df.loc[df.index[::4], "label"].str.capitalize()  # "Malignant", "Benign"
    df.loc[df.index[1], "label"] = " BENIGN "
    with caplog.at_level(logging.WARNING):
        res = evaluate_classification(df, positive_label="Malignant", n_resamples=50)
    plain = evaluate_classification(_df(), positive_label="malignant", n_resamples=50)
    assert res["counts"]["positive"] == plain["counts"]["positive"] == 16
    assert res["headline"][0]["value"] == pytest.approx(plain["headline"][0]["value"])
    assert "'Benign'" in caplog.text and "'benign'" in caplog.text and "merged" in caplog.text
    assert len(res["warnings"]) == 1 and "' BENIGN '" not in res["warnings"][0] and "'BENIGN'" in res["warnings"][0]
    html = render_report(res, tmp_path, formats=("html",))["report.html"].read_text(encoding="utf-8")
    assert "differ only in upper/lower case" in html


def test_multiclass_labels_match_class_names_ignoring_case():
    rng = np.random.default_rng(2)
    p = rng.dirichlet([1, 1, 1], 30)
    names = ["benign", "malignant", "normal"]
    labels = [names[i % 3].upper() if i % 2 else names[i % 3] for i in range(30)]
    df = pd.DataFrame({"case_id": [f"c{i}" for i in range(30)], "label": labels, "p0": p[:, 0], "p1": p[:, 1],
                       "p2": p[:, 2]})
    res = evaluate_classification(df, columns={"scores": ["p0", "p1", "p2"]}, class_names=names, n_resamples=30)
    assert res["counts_per_class"] == {"benign": 10, "malignant": 10, "normal": 10}
    with pytest.raises(InputError, match="differ only in upper/lower case"):
        evaluate_classification(df, columns={"scores": ["p0", "p1", "p2"]}, class_names=["benign", "Benign", "x"],
                                n_resamples=30)


def test_one_class_written_in_two_cases_is_not_split_into_two_classes():
    """All cases malignant, written "Malignant" and "malignant": once silently scored as two classes (a ROC of
    positives against positives); now one class, hence a triage listing."""
    df = _df(labels=("malignant", "Malignant"))
    res = evaluate_classification(df, positive_label="malignant", n_resamples=30)
    assert res.get("triage_only") and res["counts"]["positive"] == len(df) and res["counts"]["negative"] == 0
    assert res["warnings"] and "'Malignant'" in res["warnings"][0]
