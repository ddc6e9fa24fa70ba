"""Patient identifiers (data-layer part): a synthetic study with identifying DICOM tags flows through convert,
index, evaluate and report; no identifying value may appear in any produced file, log line, stdout or stderr."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from medeff.demo.dicom_writer import write_ct_series
from medeff.io.base import ImageData
from medeff.utils.text_scan import decoded_texts

IDENTITY = {
    "PatientName": "Zebulon^Quixworth^Ignatius",
    "PatientID": "MRN-93817264",
    "PatientBirthDate": "19470315",
    "AccessionNumber": "ACC-5550199",
    "InstitutionName": "Saint Wilhelmina Hospital",
    "ReferringPhysicianName": "Drofnats^Ophelia",
    "OtherPatientIDs": "ALT-7744120",
    "PatientAddress": "12 Quarry Lane Smalltown",
}


def _needles() -> list[str]:
    out = []
    for value in IDENTITY.values():
        out.append(value)
        out += [part for part in re.split(r"[\^ ]", value) if len(part) >= 5]
    return sorted(set(out))


def _run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "medeff.cli.main", "--log-level", "DEBUG", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("phi")
    rng = np.random.default_rng(0)
    folders = []
    for p in range(4):  # four patients, one series each; one carries the identity above
        arr = rng.normal(0, 200, size=(24, 20, 6)).astype(np.float32)
        ident = IDENTITY if p == 0 else {"PatientID": f"OTHER-{p}", "PatientName": f"Other^{p}"}
        img = ImageData(arr, (0.8, 0.8, 2.0), (-10.0, -8.0, 40.0 + p), np.eye(3), {})
        folder = root / "dicom" / f"series_{p}"
        write_ct_series(img, folder, identity=ident, seed=p)
        folders.append(folder)
    return root, folders


def test_no_identifier_reaches_any_output(study, tmp_path):
    root, folders = study
    source = b"".join(p.read_bytes() for p in folders[0].iterdir())
    assert all(v.encode() in source for v in IDENTITY.values())  # the search below would find them
    out = tmp_path / "outputs"
    out.mkdir()
    runs = [
        _run("convert", str(folders[0]), str(out / "ct.nii.gz")),
        _run("index", str(root / "dicom"), str(out / "index.json"), "folds.k=2"),
    ]
    index = json.loads((out / "index.json").read_text())
    assert len(index["cases"]) == 4
    rng = np.random.default_rng(1)
    preds = pd.DataFrame({"case_id": [c["case_id"] for c in index["cases"]] * 5,
                          "patient": [c["group"] for c in index["cases"]] * 5,
                          "label": rng.integers(0, 2, 20), "score": rng.random(20)})
    preds["case_id"] = [f"{c}_{i}" for i, c in enumerate(preds["case_id"])]
    preds.to_csv(out / "predictions.csv", index=False)
    runs.append(_run("evaluate", f"classification.predictions={out / 'predictions.csv'}",
                     "classification.columns.group=patient", "bootstrap.n_resamples=20", f"output_dir={out / 'eval'}",
                     "formats=[json,csv]"))  # the full report (HTML, PDF) comes from `medeff report` below
    runs.append(_run("report", f"results={out / 'eval' / 'results.json'}", f"output_dir={out / 'report'}"))

    produced = sorted(p for p in out.rglob("*") if p.is_file())
    names = {p.name for p in produced}
    assert {"ct.nii.gz", "index.json", "results.json", "report.html", "report.pdf", "summary.json",
            "per_case.csv", "metrics.csv"} <= names
    streams = [(str(p), t) for p in produced for t in decoded_texts(p)]
    streams += [(f"stdout/stderr of `medeff {r.args[5]}`", (r.stdout + r.stderr).encode()) for r in runs]
    assert any(b"DEBUG" in t or b"INFO" in t for _, t in streams[-4:]), "logs were not captured"
    found = [(where, needle) for needle in _needles() for where, text in streams
             if needle.encode() in text or needle.lower().encode() in text.lower()]
    assert found == [], found
