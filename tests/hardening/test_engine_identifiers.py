"""Patient identifiers end to end: a DICOM study whose identifying tags all carry distinctive values, with label
maps, goes through ``medeff index``, ``train``, ``predict``, ``evaluate`` and ``report`` (each at DEBUG log level);
no identifying value may appear in any produced file (checkpoints unpickled with ``weights_only`` and searched
recursively, and as raw bytes; CSV/TensorBoard logs, hparams/config YAML, index, predictions, masks, results,
HTML/PDF/JSON/CSV report) or in the stdout/stderr of any run."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import nibabel as nib
from conftest import record
from engine_helpers import SEG, SHAPE, SPACING

from medeff.demo.dicom_writer import write_ct_series
from medeff.demo.phantom import make_phantom_ct
from medeff.utils.text_scan import decoded_texts


def identity(p: int) -> dict[str, str]:
    """Distinctive values for every identifying tag of patient ``p`` (each part of 5+ characters is unusual)."""
    return {
        "PatientName": f"Zebulonis{p}^Quixworthy^Ignatiuz",
        "PatientID": f"MRN-9381726{p}",
        "PatientBirthDate": f"194703{15 + p}",
        "AccessionNumber": f"ACC55501{p}9",
        "InstitutionName": f"Wilhelmina{p} Vandermeerhof Clinic",
        "InstitutionAddress": f"Quarrylane {12 + p} Smalltownia",
        "InstitutionalDepartmentName": f"Radiologix{p} Ostwing",
        "ReferringPhysicianName": f"Drofnatsky{p}^Opheliane",
        "PerformingPhysicianName": f"Performova{p}^Kasimira",
        "OperatorsName": f"Operatova{p}^Ludmilla",
        "StationName": f"STATION-Q{p}Z",
        "StudyID": f"STU-4821{p}7",
        "OtherPatientIDs": f"ALT-774412{p}",
        "PatientAddress": f"Cobblestrasse {40 + p} Grimwoldia",
        "PatientTelephoneNumbers": f"+44 7700 90{p}123",
    }


IDENTITIES = [identity(p) for p in range(3)]


def needles() -> list[str]:
    """Every value, its PN form with spaces, and each part of at least 5 characters."""
    out = set()
    for ident in IDENTITIES:
        for value in ident.values():
            out |= {value, value.replace("^", " ")}
            out |= {part for part in re.split(r"[\^ ]", value) if len(part) >= 5}
    return sorted(out)


def _study(root: Path) -> Path:
    rows = ["image,label,patient_id"]
    for p, ident in enumerate(IDENTITIES):
        ct, lab = make_phantom_ct(SHAPE, SPACING, seed=p)
        write_ct_series(ct, root / f"series_{'abc'[p]}", identity=ident, seed=p)
        nib.save(nib.Nifti1Image(lab.array, lab.affine_ras), str(root / f"labels_{'abc'[p]}.nii.gz"))
        rows.append(f"series_{'abc'[p]},labels_{'abc'[p]}.nii.gz,{ident['PatientID']}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_no_identifier_reaches_any_engine_output(zygote, tmp_path):
    manifest = _study(tmp_path / "study")
    source = b"".join(p.read_bytes() for p in (tmp_path / "study" / "series_a").iterdir())
    assert all(v.encode() in source for v in IDENTITIES[0].values())  # the search below would find them
    out = tmp_path / "outputs"
    logs: list[tuple[str, str]] = []

    def run(*args: str, ok=(0,)) -> str:
        rc, text = zygote.run(["--log-level", "DEBUG", *args])
        assert rc in ok, text[-3000:]
        logs.append((f"output of `medeff {args[0]}`", text))
        return text

    run("index", str(manifest), str(out / "index.json"), "folds.k=2")
    index = json.loads((out / "index.json").read_text())
    assert len(index["cases"]) == 3
    run("train", *SEG, f"data.index={out / 'index.json'}", f"run_dir={out / 'run'}", "logger=[csv,tensorboard]")
    ckpt = out / "run" / "checkpoints" / "last.ckpt"
    run("predict", f"ckpt={ckpt}", f"input={out / 'index.json'}", f"output_dir={out / 'pred'}", "device=cpu")
    run("predict", f"ckpt={ckpt}", f"input={tmp_path / 'study' / 'series_a'}", f"output_dir={out / 'pred_dicom'}",
        "device=cpu")
    preds = {c["case_id"]: c["mask"] for c in json.loads((out / "pred" / "predictions.json").read_text())["cases"]}
    with open(out / "seg_eval.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "prediction", "reference", "group"])
        for c in index["cases"]:
            w.writerow([c["case_id"], preds[c["case_id"]], str(Path(index["root"]) / c["label"]), c["group"]])
    run("evaluate", "kind=segmentation", f"segmentation.index={out / 'seg_eval.csv'}",
        "segmentation.columns.group=group", "segmentation.num_workers=0", "bootstrap.n_resamples=20", f"output_dir={out / 'eval'}", "formats=[json,csv]")
    run("report", f"results={out / 'eval' / 'results.json'}", f"output_dir={out / 'report'}")

    produced = sorted(p for p in out.rglob("*") if p.is_file())
    names = {p.name for p in produced}
    assert {"index.json", "last.ckpt", "metrics.csv", "hparams.yaml", "config.yaml", "predictions.json",
            "results.json", "report.html", "report.pdf"} <= names, names
    # the DICOM folder's mask is named by a pseudonym, not by the folder
    assert [n for n in os.listdir(out / "pred_dicom") if n.endswith("_seg.nii.gz")] == [
        f"{json.loads((out / 'pred_dicom' / 'predictions.json').read_text())['cases'][0]['case_id']}_seg.nii.gz"]
    assert re.fullmatch(r"case_[0-9a-f]{12}_seg\.nii\.gz", next(n for n in os.listdir(out / "pred_dicom")
                                                               if n.endswith("_seg.nii.gz")))
    assert any(n.startswith("events.out.tfevents") for n in names)
    streams = [(str(p), t) for p in produced for t in decoded_texts(p)]
    streams += [(where, text.encode()) for where, text in logs]
    assert all("INFO" in text for _, text in logs), "the logs were not captured"
    found = sorted({(where, needle) for needle in needles() for where, text in streams
                    if needle.encode() in text or needle.lower().encode() in text.lower()})
    assert found == [], found
    print(f"identifiers: {len(needles())} values searched in {len(produced)} files ({len(streams)} streams, "
          f"{len(logs)} run outputs), found none")
    record("identifiers-engine", "files searched", len(produced))
    record("identifiers-engine", "values searched", len(needles()))
