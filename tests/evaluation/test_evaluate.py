"""evaluate_classification / evaluate_segmentation end to end, report files, CLIs and the no-PHI guarantee."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medeff.cli.main import main
from medeff.errors import InputError
from medeff.evaluation import evaluate_classification, evaluate_segmentation, render_report
from medeff.evaluation.roc import delong

PHI = ["DOE^JOHN", "MRN12345", "19610412", "St. Elsewhere Hospital", "SMITH^JANE", "MRN67890"]


def _predictions(rng, n_patients=60, images=2):
    rows = []
    for p in range(n_patients):
        y = int(rng.random() < 0.4)
        for i in range(images):
            rows.append({"image": f"img{p}_{i}", "case_id": f"MRN{10000 + p}", "patient": f"MRN{10000 + p}",
                         "label": y, "prob": float(1 / (1 + np.exp(-(rng.normal() + 1.5 * y)))),
                         "diameter_mm": rng.uniform(3, 30), "scanner": rng.choice(["A", "B"])})
    return pd.DataFrame(rows)


def test_aggregation_mean_and_max(rng):
    df = _predictions(rng)
    for how in ("mean", "max"):
        res = evaluate_classification(df, columns={"case": "case_id", "label": "label", "scores": "prob"},
                                      aggregate=how, n_resamples=200)
        per = df.groupby("case_id").agg(prob=("prob", how), label=("label", "first"))
        assert res["counts"]["cases"] == 60 and res["counts"]["input_rows"] == 120
        assert res["headline"][0]["value"] == pytest.approx(delong(per["label"], per["prob"]).auc[0])
    with pytest.raises(InputError, match="more than one row"):
        evaluate_classification(df, columns={"case": "case_id", "scores": "prob"})
    with pytest.raises(InputError, match="lacks column"):
        evaluate_classification(df, columns={"case": "case_id", "scores": "probability"})


def test_subgroup_with_one_class_is_not_estimable(rng):
    df = _predictions(rng, images=1)
    df.loc[df["label"] == 1, "scanner"] = "C"  # scanner A/B: negatives only
    df.loc[df.index[:3], "scanner"] = "C"
    res = evaluate_classification(df, columns={"case": "image", "group": "patient", "scores": "prob"},
                                  subgroups=[{"column": "scanner"}, {"column": "diameter_mm", "bins": [0, 10, 20, 40],
                                                                     "unit": "mm"}], n_resamples=200)
    rows = {r["level"]: r for r in res["subgroups"][0]["rows"]}
    assert not rows["A"]["estimable"] and rows["A"]["metrics"][0]["value"] is None
    assert rows["C"]["estimable"] and rows["C"]["metrics"][0]["value"] is not None
    assert sum(r["n"] for r in res["subgroups"][1]["rows"]) == len(df)
    assert [r["level"] for r in res["subgroups"][1]["rows"]][0] == "[0, 10) mm"


def test_multiclass_one_vs_rest(rng, tmp_path):
    n = 150
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    names = ["benign", "malignant", "normal"]
    df = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "label": [names[k] for k in y],
                       **{f"p_{c}": p[:, i] for i, c in enumerate(names)}})
    res = evaluate_classification(df, columns={"scores": [f"p_{c}" for c in names]}, class_names=names,
                                  n_resamples=200)
    from sklearn.metrics import roc_auc_score

    aucs = [r["auc"]["value"] for r in res["per_class"]]
    np.testing.assert_allclose(aucs, [roc_auc_score(y == k, p[:, k]) for k in range(3)])
    assert res["headline"][0]["value"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert np.trace(np.array(res["confusion_matrix"])) == int((p.argmax(1) == y).sum())
    html = render_report(res, tmp_path, formats=("html", "csv"))["report.html"].read_text()
    assert "Macro-average ROC AUC" in html and "Per class (one-vs-rest)" in html and "<td>malignant</td>" in html


def test_logit_scores_skip_calibration(rng, tmp_path):
    df = _predictions(rng, images=1)
    df["logit"] = np.log(df["prob"] / (1 - df["prob"]))
    res = evaluate_classification(df, columns={"case": "image", "scores": "logit"}, threshold=0.0,
                                  n_resamples=100)
    assert res["calibration"] is None and not res["probabilities"]
    assert {r["key"] for r in res["headline"]} == {"auc", "auc_bootstrap", "average_precision"}
    written = render_report(res, tmp_path, formats=("html", "pdf"))
    assert "Reliability" not in written["report.html"].read_text()


def _write_masks(folder: Path, n: int, rng, shift: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = np.zeros((24, 24, 16), np.uint8)
        arr[4 + shift:14 + shift, 4:14, 3:10] = 1
        arr[15:20, 15:20, 8:12] = 2
        if i == 0:
            arr[arr == 2] = 0  # label 2 missing in this case
        img = nib.Nifti1Image(arr, np.diag([0.8, 0.8, 2.5, 1.0]))
        p = folder / f"case{i:02d}.nii.gz"
        nib.save(img, p)
        paths.append(p)
    return paths


def test_segmentation_from_folders_and_index(tmp_path, rng):
    _write_masks(tmp_path / "ref", 4, rng)
    _write_masks(tmp_path / "pred", 4, rng, shift=1)
    res = evaluate_segmentation(prediction_dir=tmp_path / "pred", reference_dir=tmp_path / "ref",
                                labels={1: "liver", 2: "spleen"}, n_resamples=100)
    agg = {a["name"]: {m["key"]: m for m in a["metrics"]} for a in res["aggregates"]}
    assert agg["liver"]["dice"]["value"] == pytest.approx(0.9) and agg["liver"]["hd95"]["value"] == pytest.approx(0.8)
    assert agg["spleen"]["dice"]["n"] == 3 and agg["spleen"]["dice"]["n_excluded"] == 1  # both empty -> NaN
    idx = pd.DataFrame({"case_id": ["a", "b"], "prediction": ["pred/case01.nii.gz", "pred/case02.nii.gz"],
                        "reference": ["ref/case01.nii.gz", "ref/case03.nii.gz"]})
    idx.to_csv(tmp_path / "index.csv", index=False)
    res2 = evaluate_segmentation(tmp_path / "index.csv", empty_both="perfect", n_resamples=100)
    assert res2["counts"]["cases"] == 2 and res2["provenance"]["inputs"]["index"]["file"] == "index.csv"
    bad = nib.Nifti1Image(np.zeros((24, 24, 16), np.uint8), np.diag([1.0, 0.8, 2.5, 1.0]))
    nib.save(bad, tmp_path / "pred" / "case03.nii.gz")
    with pytest.raises(InputError, match="different geometry"):
        evaluate_segmentation(prediction_dir=tmp_path / "pred", reference_dir=tmp_path / "ref", n_resamples=10)
    (tmp_path / "pred" / "case03.nii.gz").unlink()
    with pytest.raises(InputError, match="do not match"):
        evaluate_segmentation(prediction_dir=tmp_path / "pred", reference_dir=tmp_path / "ref", n_resamples=10)


def _pdf_text(data: bytes, extract) -> str:
    """Raw PDF plus its decompressed Flate streams, plus the string operands of each text operator joined, plus the
    text decoded through the fonts' ToUnicode maps by ``extract`` (the ``pdf_text`` fixture: pages drawn with
    embedded TrueType fonts)."""
    chunks = [data.decode("latin-1")]
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            chunks.append(zlib.decompress(m.group(1)).decode("latin-1"))
        except zlib.error:
            continue
    joined = []
    for chunk in chunks[1:]:
        for block in re.findall(r"BT(.*?)ET", chunk, re.S):
            joined.append("".join(re.findall(r"\(((?:[^()\\]|\\.)*)\)", block)).replace("\\", ""))
    return "\n".join(chunks + joined + [extract(data)])


def test_no_phi_in_any_output_and_cli(tmp_path, rng, pdf_text):
    df = _predictions(rng, n_patients=40, images=1)
    df["PatientName"] = ["DOE^JOHN", "SMITH^JANE"] * 20
    df["PatientBirthDate"] = "19610412"
    df["InstitutionName"] = "St. Elsewhere Hospital"
    df.loc[0, "case_id"] = df.loc[0, "patient"] = "MRN12345"
    df.loc[1, "case_id"] = df.loc[1, "patient"] = "MRN67890"
    df["prob_b"] = np.clip(df["prob"] + rng.normal(0, 0.2, len(df)), 0, 1)
    (tmp_path / "DOE^JOHN").mkdir()
    csv = tmp_path / "DOE^JOHN" / "preds.csv"  # a folder named after the patient must not leak either
    df.to_csv(csv, index=False)
    out = tmp_path / "out"
    rc = main(["evaluate", f"classification.predictions='{csv}'", "classification.columns.scores=prob",
               "classification.columns.group=patient", "bootstrap.n_resamples=200", f"out_dir={out}",
               "classification.subgroups=[{column: scanner}]",
               "classification.compare={score_column: prob_b, name: B}"])
    assert rc == 0
    rc = main(["report", f"results={out / 'results.json'}", f"out_dir={out / 'again'}", "formats=[html,json]"])
    assert rc == 0
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"results.json", "summary.json", "per_case.csv", "metrics.csv", "report.html",
                                       "report.pdf"}
    report_text = _pdf_text((out / "report.pdf").read_bytes(), pdf_text)
    assert "Sensitivity" in report_text and "Provenance" in report_text  # the extraction can see the report's words
    pseudonyms = set(pd.read_csv(out / "per_case.csv")["case"])
    assert any(p in report_text for p in pseudonyms)  # worst-case table ids are visible to the extraction
    for path in files:
        text = _pdf_text(path.read_bytes(), pdf_text) if path.suffix == ".pdf" else path.read_text(encoding="utf-8")
        for value in PHI:
            assert value not in text, f"{value!r} found in {path.name}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["case_ids_pseudonymised"] and summary["settings"]["group_ids_pseudonymised"]
    assert summary["comparison"]["model_b"] == "B"
    assert len(summary["provenance"]["inputs"]["predictions"]["sha256"]) == 64
    assert main(["evaluate", "classification.predictions=/nonexistent.csv", f"out_dir={out}"]) == 2


def test_segmentation_report_files(tmp_path, rng):
    _write_masks(tmp_path / "ref", 3, rng)
    _write_masks(tmp_path / "pred", 3, rng, shift=2)
    res = evaluate_segmentation(prediction_dir=tmp_path / "pred", reference_dir=tmp_path / "ref", n_resamples=50,
                                one_empty_distance="diagonal")
    written = render_report(res, tmp_path / "rep")
    html = written["report.html"].read_text()
    assert "Dice similarity coefficient" in html and "95% CI" in html and "data:image/png;base64" in html
    rows = pd.read_csv(written["per_case.csv"])
    assert len(rows) == 6 and set(rows["label"]) == {1, 2}
    assert written["report.pdf"].read_bytes().startswith(b"%PDF")


def test_segmentation_cli_and_errors(tmp_path, rng, capsys):
    _write_masks(tmp_path / "ref", 3, rng)
    _write_masks(tmp_path / "pred", 3, rng, shift=1)
    out = tmp_path / "out"
    rc = main(["evaluate", "kind=segmentation", f"segmentation.prediction_dir={tmp_path / 'pred'}",
               f"segmentation.reference_dir={tmp_path / 'ref'}", "segmentation.labels={1: liver, 2: spleen}",
               "segmentation.num_workers=1", "bootstrap.n_resamples=50", f"out_dir={out}", "formats=[json,csv]"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [a["name"] for a in summary["aggregates"]] == ["liver", "spleen"]
    assert main(["evaluate", "kind=segmentaton", f"out_dir={out}"]) == 2
    assert "'segmentation'" in " ".join(capsys.readouterr().err.split())
    assert main(["evaluate", "kind=segmentation", f"out_dir={out}"]) == 2
    assert main(["report", f"results={tmp_path / 'missing.json'}", f"out_dir={out}"]) == 2


def test_evaluation_imports_no_training_code():
    import subprocess
    import sys

    code = ("import sys, medeff.evaluation, medeff.cli.evaluate, medeff.cli.report; "
            "bad = [m for m in ('lightning', 'pytorch_lightning', 'medeff.engine', 'medeff.models') "
            "if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bootstrap_resamples_patients_not_cases(rng):
    one = _predictions(rng, n_patients=50, images=1)
    two = pd.concat([one, one.assign(image=one["image"] + "_b")], ignore_index=True)  # every patient twice
    cols = {"case": "image", "group": "patient", "scores": "prob"}
    a = evaluate_classification(one, columns=cols, n_resamples=300, seed=3)["headline"][1]
    b = evaluate_classification(two, columns=cols, n_resamples=300, seed=3)["headline"][1]
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((b["ci_low"], b["ci_high"]))  # duplicates add no information
    c = evaluate_classification(two, columns={**cols, "group": None}, n_resamples=300, seed=3)["headline"][1]
    assert c["ci_high"] - c["ci_low"] < 0.85 * (b["ci_high"] - b["ci_low"])  # ignoring clusters is overconfident
