"""Outcome of every real DICOM series and every edge case in ../shared/data (the table in docs/data.md)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from dicom_synth import assert_equals_sitk, sitk_reference

from medeff.errors import DicomSeriesError
from medeff.io import find_series, read_dicom_series, read_image, write_image
from medeff.io.base import LPS_TO_RAS

pytestmark = pytest.mark.shared_data

REAL_SERIES = [
    "ct_organs_totalsegmentator/example_ct_dicom",  # JPEG 2000, decoded by SimpleITK/GDCM
    "chest_ct_lung_pet_ct_dx/Lung_Dx-A0001_CT_5mm_kernelL",  # implicit VR, read natively
    "chest_ct_lung_pet_ct_dx/Lung_Dx-A0002_CT_8mm_B40f",  # explicit VR, read natively
]
EDGE = "dicom_edge_cases"
D2N = f"{EDGE}/dicom2nifti_failing"


@pytest.mark.parametrize("rel", REAL_SERIES)
def test_real_series_equal_simpleitk_and_survive_nifti_round_trip(shared_data, rel, tmp_path):
    folder = shared_data / rel
    image = read_dicom_series(folder)
    assert image.meta["repairs"] == [] and image.meta["modality"] == "CT"
    ref = sitk_reference(folder)
    assert_equals_sitk(image, ref)
    out = write_image(image, tmp_path / "vol.nii.gz")
    back = read_image(out)
    assert back.array.dtype == image.array.dtype
    assert_equals_sitk(back, ref)


@pytest.mark.parametrize("rel", REAL_SERIES[1:])  # example_ct_dicom carries no identifiers at all
def test_real_series_meta_and_logs_hold_no_patient_identifiers(shared_data, rel, caplog):
    import pydicom

    folder = shared_data / rel
    ds = pydicom.dcmread(next(p for p in sorted(folder.iterdir()) if p.is_file()), stop_before_pixels=True)
    secrets = [str(ds.get(tag, "") or "") for tag in ("PatientID", "PatientName", "PatientBirthDate",
                                                      "AccessionNumber", "InstitutionName")]
    secrets = [s for s in secrets if len(s) >= 4]
    assert secrets, "the header should carry identifiers for this test to mean anything"
    caplog.set_level(logging.DEBUG, logger="medeff")
    image = read_image(folder)
    info = find_series(folder)[0]
    texts = [repr({k: v for k, v in image.meta.items() if k != "source"}), caplog.text,
             repr(info).replace(str(info.folder), "")]
    for secret in secrets:
        assert all(secret not in text for text in texts), "a patient identifier leaked"


def test_real_series_sizes(shared_data):
    sizes = {rel: read_dicom_series(shared_data / rel).shape for rel in REAL_SERIES[1:]}
    assert list(sizes.values()) == [(512, 512, 64), (512, 512, 30)]


def test_lung_folder_scan_ignores_xml_and_finds_two_series(shared_data):
    series = find_series(shared_data / "chest_ct_lung_pet_ct_dx")  # Annotation_bbox_xml/ holds only .xml
    assert [(s.n_files, s.folder.name) for s in series] == [
        (64, "Lung_Dx-A0001_CT_5mm_kernelL"), (30, "Lung_Dx-A0002_CT_8mm_B40f")]
    assert all(s.orientation == "axial" and s.modality == "CT" for s in series)
    other = read_dicom_series(shared_data / "chest_ct_lung_pet_ct_dx", series_uid=series[1].series_uid)
    assert other.shape == (512, 512, 30)
    for s in series:
        assert "Lung_Dx" not in repr(s).replace(str(s.folder), "")  # PatientID absent from the repr


def test_dicom_grid_matches_its_label_map(shared_data):
    # the label map beside the TotalSegmentator DICOM covers the same voxels, stored with the j axis flipped
    from medeff.io.base import ImageData

    image = read_dicom_series(shared_data / "ct_organs_totalsegmentator/example_ct_dicom")
    seg = read_image(shared_data / "ct_organs_totalsegmentator/example_seg_dicom.nii.gz")
    flip = np.diag([1.0, -1.0, 1.0])
    origin = np.asarray(seg.origin) + (seg.shape[1] - 1) * seg.spacing[1] * seg.direction[:, 1]
    flipped = ImageData(seg.array[:, ::-1], seg.spacing, origin, seg.direction @ flip)
    assert image.same_geometry(flipped, atol=1e-3)


def test_tiny_nonuniform_gap_refused(shared_data):
    folder = shared_data / EDGE / "tiny_ct_nonuniform_gap"
    with pytest.raises(DicomSeriesError, match="161 missing slice") as err:
        read_dicom_series(folder)
    assert err.value.path.endswith("7136") and "on_gap" in str(err.value)
    with pytest.raises(DicomSeriesError, match="max_interpolated_slices"):  # a 200 mm hole is not filled
        read_image(folder, on_gap="interpolate")


def test_tiny_series_reads_without_the_gap(shared_data, tmp_path):
    # the three contiguous slices form a clean volume equal to SimpleITK's
    import shutil

    for name in ("7136", "7166", "7196"):
        shutil.copy(shared_data / EDGE / "tiny_ct_nonuniform_gap" / name, tmp_path / name)
    image = read_dicom_series(tmp_path)
    assert image.shape == (16, 16, 3) and image.spacing[2] == pytest.approx(1.25, abs=1e-4)
    assert_equals_sitk(image, sitk_reference(tmp_path))


def test_minimal_header_chest_loads_with_warning(shared_data):
    folder = shared_data / EDGE / "minimal_header_chest"
    image = read_dicom_series(folder)
    assert image.shape == (512, 512, 2) and image.meta["modality"] == ""
    assert any("Modality" in w for w in image.meta["warnings"])
    assert_equals_sitk(image, sitk_reference(folder))
    np.testing.assert_array_equal(image.array[:, :, 0], image.array[:, :, 1])  # README: identical pixel data


def test_gantry_tilt_repaired_or_refused(shared_data, caplog):
    folder = shared_data / D2N / "gantrytilting/001"
    caplog.set_level(logging.WARNING, logger="medeff")
    image = read_dicom_series(folder)
    assert image.meta["repairs"] and "gantry tilt of 14.00 degrees" in image.meta["repairs"][0]
    assert "gantry tilt" in caplog.text
    assert image.shape == (512, 521, 4)
    np.testing.assert_allclose(image.direction.T @ image.direction, np.eye(3), atol=1e-6)
    assert image.spacing[2] == pytest.approx(5.0 * np.cos(np.radians(14.0)), abs=2e-3)  # distance between planes
    with pytest.raises(DicomSeriesError, match="gantry-tilted"):
        read_image(folder, on_tilt="error")


@pytest.mark.parametrize("policy", ["drop_identical", "error"])
def test_notavolume_refused(shared_data, policy):
    with pytest.raises(DicomSeriesError, match="same slice position") as err:
        read_image(shared_data / D2N / "notavolume/001", on_duplicate=policy)
    assert "002.dcm" in str(err.value)


def test_sliceincrement_001_missing_slice(shared_data):
    folder = shared_data / D2N / "sliceincrement/001"
    with pytest.raises(DicomSeriesError, match="1 missing slice") as err:
        read_dicom_series(folder)
    assert "IM-0001-0010-0001.dcm" in str(err.value)
    image = read_image(folder, on_gap="interpolate")
    assert image.shape == (512, 512, 5) and image.spacing[2] == pytest.approx(5.0, abs=1e-3)
    import SimpleITK as sitk

    ref = sitk.GetArrayFromImage(sitk_reference(folder)).transpose(2, 1, 0)
    for k_out, k_in in ((0, 0), (1, 1), (2, 2), (4, 3)):
        np.testing.assert_array_equal(image.array[:, :, k_out], ref[:, :, k_in])
    expected = np.rint((ref[:, :, 2].astype(np.float32) + ref[:, :, 3]) / 2)
    assert np.abs(image.array[:, :, 3] - expected).max() <= 1  # weights are ~0.5 (positions carry rounding)


def test_sliceincrement_002_tilt_and_gap_against_ground_truth(shared_data):
    import nibabel as nib

    folder = shared_data / D2N / "sliceincrement/002"
    with pytest.raises(DicomSeriesError, match="missing slice"):
        read_dicom_series(folder)
    image = read_image(folder, on_gap="interpolate")
    assert len(image.meta["repairs"]) == 2
    truth = nib.load(shared_data / D2N / "sliceincrement/002_ground_truth.nii.gz")
    # same grid size; the pixel data are noise, so only the geometry is comparable
    assert image.shape == truth.shape == (512, 514, 5)
    lps = LPS_TO_RAS @ truth.affine
    np.testing.assert_allclose(np.linalg.norm(lps[:3, :2], axis=0), image.spacing[:2], atol=1e-4)
    for axis in range(3):  # parallel axes (dicom2nifti flips the row axis)
        cos = abs(lps[:3, axis] @ image.direction[:, axis]) / np.linalg.norm(lps[:3, axis])
        assert cos == pytest.approx(1.0, abs=1e-4)
    centre = np.array([(n - 1) / 2 for n in image.shape] + [1.0])
    np.testing.assert_allclose((lps @ centre)[:3], (image.affine_lps @ centre)[:3], atol=0.5)
    # dicom2nifti spaces the planes by the table step (0.778 mm); their true distance is step * cos(tilt)
    assert np.linalg.norm(lps[:3, 2]) * np.cos(np.radians(15.5)) == pytest.approx(image.spacing[2], abs=1e-3)
