"""Bounded smoke run of pipelines/organ_segmentation.sh on the real TotalSegmentator data (tiny model, one epoch):
the mask lies on the DICOM series grid, the report has a Dice table per organ, and no identifier written into the
DICOM headers reaches any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .identifiers import find_identifiers, header_identifiers

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "pipelines" / "organ_segmentation.sh"
ORGANS = ["spleen", "kidney_right", "kidney_left", "liver", "stomach", "pancreas", "aorta"]
IDENTITY = {"PatientName": "DOE^JANETTE", "PatientID": "MRN4471923", "PatientBirthDate": "19570312",
            "AccessionNumber": "ACC77120931", "InstitutionName": "Kantonsspital Nowhere"}
TINY = ["trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "data.patch_size=[32,32,32]",
        "++model.width=0.25"]


def _series_with_identifiers(src: Path, dst: Path) -> Path:
    """A copy of the (anonymised) series with identifiers written into every header."""
    import pydicom

    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(str(f))
        for tag, value in IDENTITY.items():
            setattr(ds, tag, value)
        ds.save_as(str(dst / f.name))
    return dst


@pytest.fixture(scope="module")
def run(shared_data, tmp_path_factory):
    data = shared_data / "ct_organs_totalsegmentator"
    tmp = tmp_path_factory.mktemp("organ")
    dicom = _series_with_identifiers(data / "example_ct_dicom", tmp / "series_a")
    out = tmp / "out"
    env = dict(os.environ, MEDEFF_SHARED_DATA=str(shared_data), MEDEFF_EVALUATE_OVERRIDES="bootstrap.n_resamples=50",
               MEDEFF_PIPELINE_OVERRIDES="trainer.enable_progress_bar=false")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # paths relative to the working directory, as users type them (the reference lies outside OUT_DIR)
    reference = os.path.relpath(data / "example_seg_dicom.nii.gz", tmp)
    r = subprocess.run(["bash", str(SCRIPT), "default", "series_a", reference, "out", *TINY], cwd=tmp, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, dicom, r


def test_mask_lies_on_the_dicom_series_grid(run):
    import nibabel as nib

    from medeff.io import read_image

    out, dicom, _ = run
    (mask_path,) = (out / "predict").glob("*_seg.nii.gz")  # named by a pseudonymous case id
    mask = nib.load(str(mask_path))
    series = read_image(dicom)
    assert mask.shape == series.array.shape == (512, 512, 20)
    np.testing.assert_allclose(mask.affine, series.affine_ras, atol=1e-4)
    values = set(np.unique(np.asarray(mask.dataobj)).tolist())
    assert values <= set(range(8))


def test_report_has_dice_per_organ(run):
    out, _, _ = run
    summary = json.loads((out / "report" / "summary.json").read_text())
    by_name = {a["name"]: {m["key"]: m for m in a["metrics"]} for a in summary["aggregates"]}
    assert sorted(by_name) == sorted(ORGANS)
    # organs present in the reference (after the remap) get a Dice value; the kidneys are absent from this series
    for organ in ("spleen", "liver", "stomach", "pancreas", "aorta"):
        dice = by_name[organ]["dice"]["value"]
        assert dice is not None and 0.0 <= dice <= 1.0, organ
    assert summary["settings"]["reorient_reference"] is True
    html = (out / "report" / "report.html").read_text()
    assert "Dice similarity coefficient" in html and "liver" in html
    steps = [line.split()[0] for line in (out / "timings.txt").read_text().splitlines()]
    assert steps == ["index", "train", "predict", "evaluate", "report", "total"]


def test_no_identifier_reaches_any_output(run):
    out, dicom, r = run
    needles = header_identifiers(dicom)
    assert "MRN4471923" in needles and "JANETTE" in needles  # the search looks for something real
    assert find_identifiers(out, needles, r.stdout + r.stderr) == []
