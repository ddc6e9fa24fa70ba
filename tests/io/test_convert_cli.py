"""``medeff convert``: DICOM folder to NIfTI, series choice, overwrite, and one-paragraph refusals."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from dicom_synth import SECRET_ID, assert_equals_sitk, make_series, sitk_reference

from medeff.cli.main import main
from medeff.io import read_image


def test_convert_writes_nifti_equal_to_simpleitk(series_factory, tmp_path):
    folder, _ = series_factory(n=5, names=[f"{9 - k}.dcm" for k in range(5)])
    out = tmp_path / "out" / "vol.nii.gz"
    assert main(["convert", str(folder), str(out)]) == 0
    assert_equals_sitk(read_image(out), sitk_reference(folder))


def test_convert_refuses_existing_output_without_overwrite(series_factory, tmp_path, capsys):
    folder, _ = series_factory(n=3)
    out = tmp_path / "vol.nrrd"
    out.write_text("old")
    assert main(["convert", str(folder), str(out)]) == 2
    assert "already exists" in " ".join(capsys.readouterr().err.split()) and out.read_text() == "old"
    assert main(["convert", str(folder), str(out), "--overwrite"]) == 0
    assert read_image(out).shape == (8, 6, 3)


def test_convert_series_choice_and_policy_flags(tmp_path, capsys):
    folder = tmp_path / "study"
    make_series(folder, n=5, names=[f"a{k}.dcm" for k in range(5)], series_uid="1.2.3.1", description="lung")
    make_series(folder, n=4, names=[f"b{k}.dcm" for k in range(4)], series_uid="1.2.3.2", description="soft",
                skip=(2,))
    out = tmp_path / "b.mha"
    assert main(["convert", str(folder), str(out), "--description", "soft"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "missing slice" in err and "--on-gap interpolate" in err
    assert main(["convert", str(folder), str(out), "--series-uid", "1.2.3.2", "--on-gap", "interpolate"]) == 0
    image = read_image(out)
    assert image.shape == (8, 6, 4)
    np.testing.assert_allclose(image.spacing[2], 2.0)


def test_refusal_is_one_paragraph_without_traceback(series_factory, tmp_path):
    folder, _ = series_factory(n=6, skip=(3,))
    out = tmp_path / "x.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "medeff.cli.main", "convert", str(folder), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("medeff convert: error:")
    assert "\n\n" not in proc.stderr.strip() and "Fix:" in proc.stderr
    assert SECRET_ID not in proc.stderr + proc.stdout
    assert not out.exists()


@pytest.mark.shared_data
def test_convert_real_series(shared_data, tmp_path):
    folder = shared_data / "chest_ct_lung_pet_ct_dx"
    out = tmp_path / "a0002.nii.gz"
    assert main(["convert", str(folder), str(out), "--description", "ThoraxRoutine  8.0.0  B40f"]) == 0
    assert_equals_sitk(read_image(out), sitk_reference(folder / "Lung_Dx-A0002_CT_8mm_B40f"))


@pytest.mark.shared_data
def test_convert_refuses_notavolume(shared_data, tmp_path, capsys):
    folder = shared_data / "dicom_edge_cases/dicom2nifti_failing/notavolume/001"
    assert main(["convert", str(folder), str(tmp_path / "x.nii.gz")]) == 2
    assert "same slice position" in " ".join(capsys.readouterr().err.split())


def test_convert_withholds_patient_named_folders_from_logs_and_errors(tmp_path):
    """A study whose series folders are named after the patients: no log line or error shows the names, unless
    ``--keep-names`` (de-identified data)."""
    name = "DOE_JANE_MRN884213"
    study = tmp_path / "study"
    make_series(study / name, n=5, series_uid="1.2.3.1")
    make_series(study / "SMITH_JOHN_MRN551100", n=3, series_uid="1.2.3.2")
    broken = tmp_path / name
    make_series(broken, n=5, skip=(2,))  # a gap: refused

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "medeff.cli.main", "--log-level", "DEBUG", "convert", *args],
                              capture_output=True, text=True, timeout=120)
        return proc.returncode, " ".join((proc.stdout + proc.stderr).split())

    rc, text = run(str(study), str(tmp_path / "a.nii.gz"))
    assert rc == 0 and "2 DICOM series" in text, text[-2000:]  # the reader's choice is still reported
    rc2, text2 = run(str(broken), str(tmp_path / "b.nii.gz"))
    assert rc2 == 2 and "missing slice" in text2, text2[-2000:]
    for t in (text, text2):
        squeezed = t.replace(" ", "")
        assert "MRN884213" not in squeezed and "DOE_JANE" not in squeezed and "MRN551100" not in squeezed
    rc, text = run(str(study), str(tmp_path / "c.nii.gz"), "--keep-names")
    assert rc == 0 and name in text.replace(" ", "")
