"""Bounded smoke runs of pipelines/lung_ct_triage.sh: the real Lung-PET-CT-Dx series (with a tiny classifier trained
on phantom data first) and the phantom test set (with that checkpoint). Checks the triage table, the report's
handling of a one-class reference, and that no patient identifier of the DICOM headers reaches any output."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from .identifiers import find_identifiers, header_identifiers

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "pipelines" / "lung_ct_triage.sh"
SERIES = ("Lung_Dx-A0001_CT_5mm_kernelL", "Lung_Dx-A0002_CT_8mm_B40f")


def _run(args, shared_data, **env):
    e = dict(os.environ, MEDEFF_SHARED_DATA=str(shared_data), MEDEFF_EVALUATE_OVERRIDES="bootstrap.n_resamples=50",
             **env)
    r = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lung") / "real"
    r = _run(["lung-pet-ct-dx", str(out), "", "trainer.max_epochs=1", "++model.width=0.25"], shared_data,
             DEMO_TRAIN_SCANS="6")
    return out, r


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_real_series_triage_table_one_row_per_tumour(real):
    out, _ = real
    crops = _rows(out / "crops" / "crops.csv")
    preds = _rows(out / "predict" / "predictions.csv")
    assert len(crops) == 2 and sorted(r["case_id"] for r in preds) == sorted(r["case_id"] for r in crops)
    for r in preds:
        assert 0.0 <= float(r["p_malignant"]) <= 1.0 and 0.0 <= float(r["score"]) <= 1.0
        assert r["decision"] == ("flag" if float(r["score"]) >= float(r["threshold"]) else "routine")


def test_real_series_report_states_one_class_instead_of_auc(real):
    out, _ = real
    res = json.loads((out / "report" / "results.json").read_text())
    assert res["triage_only"] is True and "one class only (2 positive, 0 negative nodules)" in res["statement"]
    auc = next(h for h in res["headline"] if h["key"] == "auc")
    assert auc["value"] is None and auc["ci_method"] == "not estimable"
    assert len(res["per_case"]) == 2 and {r["decision"] for r in res["per_case"]} <= {"flag", "routine"}
    assert "one class only" in (out / "report" / "report.html").read_text()


def test_real_series_no_identifier_in_outputs(real, shared_data):
    out, r = real
    needles = set()
    for name in SERIES:
        needles |= header_identifiers(shared_data / "chest_ct_lung_pet_ct_dx" / name)
    assert {"Lung_Dx-A0001", "Lung_Dx-A0002"} <= needles  # the folders are named after the PatientID
    assert find_identifiers(out, needles, r.stdout + r.stderr) == []


def test_demo_data_with_the_trained_checkpoint(real, shared_data, tmp_path):
    ckpt = real[0] / "train" / "checkpoints" / "last.ckpt"
    out = tmp_path / "demo"
    _run(["demo", str(out), str(ckpt)], shared_data, DEMO_TEST_SCANS="3")
    crops = _rows(out / "crops" / "crops.csv")
    preds = _rows(out / "predict" / "predictions.csv")
    assert len(preds) == len(crops) >= 6
    assert all(0.0 <= float(r["score"]) <= 1.0 and r["decision"] in ("flag", "routine") for r in preds)
    res = json.loads((out / "report" / "results.json").read_text())
    classes = {r["label"] for r in crops}
    if classes == {"benign", "malignant"}:  # both classes: full ROC analysis with the triage operating points
        assert not res.get("triage_only") and res["headline"][0]["key"] == "auc"
        assert res["headline"][0]["value"] is not None
        assert any(op["name"] == "sensitivity_95" for op in res["operating_points"])
    else:
        assert res["triage_only"] is True
    assert "train" not in [line.split()[0] for line in (out / "timings.txt").read_text().splitlines()]
