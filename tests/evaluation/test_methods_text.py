"""Methods paragraph and reporting checklist: written from what was computed, not from defaults."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medeff.evaluation import evaluate_classification, render_report
from medeff.evaluation.methods_text import checklist_rows, methods_paragraphs


def _preds(n_patients=40, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        y = int(rng.random() < 0.4)
        for k in range(2):
            rows.append({"case_id": f"n{p}_{k}", "patient": f"pt{p}", "label": y,
                         "score": float(np.clip(0.3 * y + 0.35 + rng.normal(0, 0.2), 0.01, 0.99)),
                         "site": "A" if p % 2 else "B"})
    return pd.DataFrame(rows)


def test_methods_paragraph_states_what_was_computed():
    res = evaluate_classification(_preds(), columns={"group": "patient"}, n_resamples=123, seed=7,
                                  bootstrap_method="basic", unit="nodule")
    text = " ".join(methods_paragraphs(res))
    assert "80 nodules from 40 patients" in text
    assert "123 resamples, basic method, seed 7" in text
    assert "DeLong" in text and "decision-curve" in text and "calibration slope" in text
    pk = res["provenance"]["packages"]
    for name in ("numpy", "scikit-learn", "scipy"):
        assert f"{name} {pk[name]}" in text
    assert f"medeff {res['provenance']['medeff_version']}" in text
    assert "subgroup" not in text  # none configured, none claimed


def test_fallback_interval_methods_are_counted():
    res = evaluate_classification(_preds(6, seed=3), columns={"group": "patient"}, n_resamples=200,
                                  bootstrap_method="BCa")
    text = " ".join(methods_paragraphs(res))
    assert "BCa method" in text
    assert "the percentile interval of the valid resamples was used instead" in text


def test_checklist_reports_covered_and_missing_items(tmp_path):
    res = evaluate_classification(_preds(), columns={"group": "patient"}, n_resamples=50,
                                  subgroups=[{"column": "site"}])
    rows = {r[0]: r for r in checklist_rows(res)}
    assert rows["Subgroup performance"][1] == "covered"
    assert rows["Clinical utility (decision curve)"][1] == "covered"
    assert rows["Comparison with another model or reader"][1] == "not covered"
    assert rows["External validation"][1] == "not covered"
    assert rows["Sample size justification"][1] == "not covered"
    render_report(res, tmp_path, formats=["html"])
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Methods (for a paper)" in html and "Reporting checklist" in html
    assert html.index("Reporting checklist") < html.index("Provenance")
