"""`medeff report` renders what a results file holds: a summary.json (no per-case rows), a results.json without
settings; a file lacking what every report shows is refused with one paragraph naming the file and the key."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medeff.cli.main import main
from medeff.errors import InputError
from medeff.evaluation import evaluate_classification, evaluate_segmentation, load_results, render_report
from medeff.io import write_image
from medeff.io.base import ImageData


def _binary(n=40, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "label": y,
                         "score": np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)})


def _results(kind: str, tmp_path) -> dict:
    if kind == "binary":
        return evaluate_classification(_binary(), n_resamples=50)
    if kind == "triage":
        df = _binary()
        df["label"] = 1
        return evaluate_classification(df, n_resamples=50)
    if kind == "multiclass":
        rng = np.random.default_rng(1)
        p = rng.dirichlet([1, 1, 1], 45)
        df = pd.DataFrame({"case_id": [f"c{i}" for i in range(45)], "label": np.arange(45) % 3,
                           "a": p[:, 0], "b": p[:, 1], "c": p[:, 2]})
        return evaluate_classification(df, columns={"scores": ["a", "b", "c"]}, n_resamples=50)
    rows = []
    for i in range(3):
        arr = np.zeros((12, 12, 6), np.uint8)
        arr[2:8, 2:8 + i, 1:4] = 1
        for name in ("pred", "ref"):
            write_image(ImageData(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3)), tmp_path / f"{name}{i}.nrrd")
        rows.append({"case_id": f"k{i}", "prediction": f"pred{i}.nrrd", "reference": f"ref{i}.nrrd"})
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    return evaluate_segmentation(tmp_path / "index.csv", n_resamples=50)


@pytest.mark.parametrize("kind", ["binary", "triage", "multiclass", "segmentation"])
def test_report_from_summary_json(tmp_path, kind):
    """The README's own example: `medeff report results=summary.json` (summary.json leaves out per_case)."""
    res = _results(kind, tmp_path)
    render_report(res, tmp_path / "first", formats=("json",))
    summary = tmp_path / "first" / "summary.json"
    assert "per_case" not in json.loads(summary.read_text())
    out = tmp_path / "again"
    assert main(["report", f"results={summary}", f"output_dir={out}"]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Headline results" in html or "Overlap" in html
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF") and (out / "metrics.csv").is_file()
    assert not (out / "per_case.csv").exists()  # no rows to write: not an empty table
    if kind != "multiclass":
        assert "no per-case rows" in html or kind == "segmentation"


def test_report_without_settings_counts_or_provenance(tmp_path):
    res = _results("binary", tmp_path)
    for key in ("settings", "counts", "provenance", "title"):
        res.pop(key)
    written = render_report(res, tmp_path / "rep", formats=("html", "pdf", "csv"))
    html = written["report.html"].read_text(encoding="utf-8")
    assert "not available" in html and "Provenance" in html
    assert "95% CI" not in html  # the level is not known: intervals say "CI" only, no guessed level
    seg = _results("segmentation", tmp_path)
    seg.pop("settings")
    render_report(seg, tmp_path / "seg", formats=("html", "pdf"))


def test_results_missing_a_required_key_are_refused_naming_file_and_key(tmp_path, capsys):
    res = _results("binary", tmp_path)
    res.pop("headline")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res, default=float))
    with pytest.raises(InputError, match="headline") as err:
        load_results(path)
    assert "results.json" in str(err.value)
    assert main(["report", f"results={path}", f"output_dir={tmp_path / 'out'}"]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert "'headline'" in message and "results.json" in message and "Traceback" not in message
    with pytest.raises(InputError, match="aggregates"):
        render_report({"kind": "segmentation"}, tmp_path / "x")
