"""DICOM series rules on small synthetic series written in tmp_path (no shared data needed)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from dicom_synth import SECRET_ID, SECRET_NAME, assert_equals_sitk, make_series, sitk_reference, write_slice

from medeff.errors import ConfigError, DicomSeriesError, ImageReadError
from medeff.io import DicomReadOptions, find_series, read_dicom_series, read_image

SECRETS = (SECRET_ID, SECRET_NAME, "Secretia", "19010101", "ACC-SECRET")


def no_secrets(text: str) -> None:
    for s in SECRETS:
        assert s not in text, f"patient identifier {s!r} leaked: {text}"


def test_shuffled_file_names_are_sorted_by_position(series_factory):
    # file names and InstanceNumber run opposite to the slice positions
    names = [f"z{9 - k}.dcm" for k in range(5)]
    folder, stored = series_factory(names=names, n=5)
    image = read_dicom_series(folder)
    assert image.shape == (8, 6, 5)  # [i=column, j=row, k]
    for k in range(5):
        np.testing.assert_array_equal(image.array[:, :, k], stored[k].T.astype(np.int32) - 1024)
    assert image.spacing == pytest.approx((0.5, 0.7, 2.0))  # PixelSpacing is (row spacing, column spacing)
    assert image.origin == pytest.approx((-10, -20, 30))
    assert_equals_sitk(image, sitk_reference(folder))


def test_descending_positions_and_implicit_vr_match_simpleitk(series_factory):
    folder, _ = series_factory(step=(0, 0, -1.5), implicit=True)
    image = read_dicom_series(folder)
    assert image.origin[2] == pytest.approx(30 - 4 * 1.5)
    assert_equals_sitk(image, sitk_reference(folder))


def test_sagittal_series_geometry_matches_simpleitk(series_factory):
    folder, _ = series_factory(orientation=(0, 1, 0, 0, 0, -1), step=(1.25, 0, 0), description="sag")
    image = read_dicom_series(folder)
    assert_equals_sitk(image, sitk_reference(folder))
    np.testing.assert_allclose(image.direction[:, 2], [-1, 0, 0], atol=1e-6)  # row x column


def test_slope_intercept_integer_and_float(series_factory):
    folder, stored = series_factory("int", slope=2.0, intercept=-1000.0)
    image = read_dicom_series(folder)
    assert image.array.dtype == np.int16
    np.testing.assert_array_equal(image.array[:, :, 0], 2 * stored[0].T.astype(np.int32) - 1000)
    assert_equals_sitk(image, sitk_reference(folder))
    folder, stored = series_factory("float", slope=0.5, intercept=-10.25)
    image = read_dicom_series(folder)
    assert image.array.dtype == np.float32
    np.testing.assert_allclose(image.array[:, :, 3], 0.5 * stored[3].T - 10.25, rtol=0, atol=1e-4)


def test_per_slice_rescale_and_monochrome1(tmp_path):
    folder = _mk(tmp_path / "perslice")
    px = np.full((4, 4), 100, np.uint16)
    for k in range(3):
        write_slice(folder / f"s{k}.dcm", px, position=(0, 0, 3.0 * k), slope=1.0 + k, intercept=-10.0 * k,
                    extra={"PhotometricInterpretation": "MONOCHROME1"})
    image = read_dicom_series(folder)
    assert image.array.dtype == np.float32
    assert [float(image.array[0, 0, k]) for k in range(3)] == [100.0, 190.0, 280.0]
    assert any("per slice" in w for w in image.meta["warnings"])
    assert any("MONOCHROME1" in w for w in image.meta["warnings"])


def test_signed_pixels_rescale_to_int32_when_range_needs_it(series_factory):
    folder, stored = series_factory(dtype=np.int16, intercept=-1024.0)
    image = read_dicom_series(folder)
    assert image.array.dtype == np.int32  # int16 stored - 1024 can leave the int16 range (GDCM's rule)
    assert_equals_sitk(image, sitk_reference(folder))


def test_two_series_in_one_folder_and_stray_files(tmp_path):
    folder = tmp_path / "study"
    make_series(folder, n=6, names=[f"a{k}.dcm" for k in range(6)], series_uid="1.2.3.100", description="big")
    make_series(folder, n=3, names=[f"b{k}.dcm" for k in range(3)], series_uid="1.2.3.200", description="Small",
                seed=1)
    (folder / "annotation.xml").write_text("<xml>not dicom</xml>")
    (folder / "sub").mkdir()
    (folder / "sub" / "README").write_text("notes")
    series = find_series(folder)
    assert [s.n_files for s in series] == [6, 3]
    assert {s.series_uid for s in series} == {"1.2.3.100", "1.2.3.200"}
    assert all(p.suffix == ".dcm" for s in series for p in s.files)
    first = series[0]
    assert first.orientation == "axial" and first.modality == "CT" and (first.rows, first.columns) == (6, 8)
    assert read_dicom_series(folder).meta["series_uid"] == "1.2.3.100"
    assert read_dicom_series(folder, series_uid="1.2.3.200").shape[2] == 3
    assert read_dicom_series(folder, series_uid="200").shape[2] == 3  # unique suffix
    assert read_dicom_series(folder, description="small").shape[2] == 3
    with pytest.raises(DicomSeriesError, match="description 'Small'") as err:
        read_dicom_series(folder, description="smal")
    no_secrets(str(err.value))
    with pytest.raises(DicomSeriesError, match="matches UID"):
        read_dicom_series(folder, series_uid="9.9.9")


def test_default_prefers_axial_ct_over_larger_other_series(tmp_path):
    folder = tmp_path / "mixed"
    make_series(folder, n=7, names=[f"mr{k}.dcm" for k in range(7)], series_uid="1.2.3.7", modality="MR")
    make_series(folder, n=4, names=[f"cor{k}.dcm" for k in range(4)], series_uid="1.2.3.8",
                orientation=(1, 0, 0, 0, 0, -1), step=(0, 2, 0))
    make_series(folder, n=3, names=[f"ct{k}.dcm" for k in range(3)], series_uid="1.2.3.9")
    assert read_dicom_series(folder).meta["series_uid"] == "1.2.3.9"


def test_patient_identifiers_never_leak(series_factory, caplog):
    folder, _ = series_factory(skip=(2,))
    series = find_series(folder)
    assert series[0].patient_key == SECRET_ID  # kept for in-memory grouping only
    no_secrets(repr(series[0]))
    caplog.set_level(logging.DEBUG, logger="medeff")
    with pytest.raises(DicomSeriesError) as err:
        read_dicom_series(folder)
    no_secrets(str(err.value))
    image = read_dicom_series(folder, options=DicomReadOptions.from_config(on_gap="interpolate"))
    no_secrets(repr(image.meta))
    no_secrets(caplog.text)


def test_missing_slice_is_refused_with_a_clear_message(series_factory):
    folder, _ = series_factory(n=6, skip=(3,))
    with pytest.raises(DicomSeriesError) as err:
        read_dicom_series(folder)
    msg = str(err.value)
    assert "1 missing slice" in msg and "slice004.dcm" in msg and "'series'" in msg and "on_gap" in msg
    assert err.value.path.endswith("slice004.dcm")


def test_missing_slice_interpolated_when_asked(series_factory, caplog):
    folder, stored = series_factory(n=6, skip=(3,), intercept=0.0)
    caplog.set_level(logging.WARNING, logger="medeff")
    image = read_image(folder, on_gap="interpolate")
    assert image.shape[2] == 6 and image.spacing[2] == pytest.approx(2.0)
    expected = np.rint((stored[2].astype(np.float32) + stored[4]) / 2).T
    np.testing.assert_array_equal(image.array[:, :, 3], expected)
    np.testing.assert_array_equal(image.array[:, :, 4], stored[4].T)
    assert "interpolated" in image.meta["repairs"][0] and "interpolated" in caplog.text


def test_large_gap_refused_even_with_interpolation(series_factory):
    folder, _ = series_factory(n=12, skip=tuple(range(3, 10)))
    with pytest.raises(DicomSeriesError, match="max_interpolated_slices"):
        read_image(folder, on_gap="interpolate")


def test_nonuniform_step_is_refused(tmp_path):
    folder = tmp_path / "nonuni"
    for k, z in enumerate([0.0, 2.0, 4.0, 7.0, 9.0]):
        write_slice(folder / f"s{k}.dcm" if folder.exists() else _mk(folder) / f"s{k}.dcm",
                    np.zeros((4, 4), np.uint16), position=(0, 0, z))
    with pytest.raises(DicomSeriesError, match="non-uniform slice step"):
        read_dicom_series(folder)


def _mk(folder):
    folder.mkdir(parents=True)
    return folder


def test_small_position_jitter_within_tolerance_loads(tmp_path):
    folder = _mk(tmp_path / "jitter")
    for k, z in enumerate([0.0, 2.004, 3.998, 6.0]):
        write_slice(folder / f"s{k}.dcm", np.full((4, 4), k, np.uint16), position=(0, 0, z))
    assert read_dicom_series(folder).spacing[2] == pytest.approx(2.0)
    with pytest.raises(DicomSeriesError):
        read_image(folder, spacing_rtol=0.0001, spacing_atol_mm=0.0001)


def test_gantry_tilt_resampled_onto_orthogonal_grid(tmp_path):
    tilt = np.radians(20.0)
    col = (0.0, np.cos(tilt), -np.sin(tilt))
    folder = _mk(tmp_path / "tilted")
    markers = {}
    for k in range(4):
        px = np.zeros((10, 12), np.uint16)
        r, c = 3 + k % 2, 4 + k
        px[r, c] = 1000
        pos = np.array([5.0, -7.0, 2.5 * k])
        write_slice(folder / f"t{k}.dcm", px, position=pos, orientation=(1, 0, 0) + col, spacing=(0.8, 0.6),
                    intercept=0.0)
        markers[k] = pos + c * 0.6 * np.array([1.0, 0, 0]) + r * 0.8 * np.array(col)
    image = read_dicom_series(folder)
    assert len(image.meta["repairs"]) == 1 and "gantry tilt of 20.00 degrees" in image.meta["repairs"][0]
    d = image.direction
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-9)
    assert image.spacing[2] == pytest.approx(2.5 * np.cos(tilt), abs=1e-4)
    for k, world in markers.items():
        sl = image.array[:, :, k].astype(float)
        w = np.where(sl > 0, sl, 0)
        assert w.sum() == pytest.approx(1000, abs=2)  # linear shift keeps the marker's mass
        ii, jj = np.meshgrid(np.arange(sl.shape[0]), np.arange(sl.shape[1]), indexing="ij")
        centroid = np.array([(w * ii).sum(), (w * jj).sum()]) / w.sum()
        found = image.affine_lps @ np.array([centroid[0], centroid[1], k, 1.0])
        np.testing.assert_allclose(found[:3], world, atol=0.02)
    with pytest.raises(DicomSeriesError, match="gantry-tilted by 20.00 degrees") as err:
        read_image(folder, on_tilt="error")
    assert "on_tilt" in str(err.value)


def test_slice_off_the_line_refused(tmp_path):
    folder = _mk(tmp_path / "shifted")
    for k in range(5):
        x = 1.5 if k == 2 else 0.0  # one slice with a shifted field of view: no tilt explains it
        write_slice(folder / f"s{k}.dcm", np.zeros((4, 4), np.uint16), position=(x, 0, 2.0 * k))
    with pytest.raises(DicomSeriesError, match="do not line up") as err:
        read_dicom_series(folder)
    assert "s2.dcm" in str(err.value)


def test_exact_duplicate_dropped_with_warning(series_factory, caplog):
    folder, stored = series_factory(n=4)
    write_slice(folder / "copy_of_1.dcm", stored[1], position=(-10, -20, 32), instance=99)
    caplog.set_level(logging.WARNING, logger="medeff")
    image = read_dicom_series(folder)
    assert image.shape[2] == 4
    assert image.meta["repairs"] == ["1 exact duplicate slice(s) (same position, identical pixels) dropped."]
    assert "duplicate" in caplog.text
    with pytest.raises(DicomSeriesError, match="same slice position"):
        read_image(folder, on_duplicate="error")


def test_duplicate_position_with_different_pixels_refused(series_factory):
    folder, stored = series_factory(n=4)
    write_slice(folder / "other.dcm", stored[1] + 1, position=(-10, -20, 32))
    with pytest.raises(DicomSeriesError, match="pixel data differ"):
        read_dicom_series(folder)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"shape": (7, 8)}, "image size 7x8"),
        ({"drop": ("ImagePositionPatient",)}, "ImagePositionPatient"),
        ({"drop": ("ImageOrientationPatient",)}, "ImageOrientationPatient"),
        ({"drop": ("PixelSpacing",)}, "PixelSpacing"),
        ({"orientation": (1, 0, 0, 0, 0.9, 0.1)}, "ImageOrientationPatient differs"),
        ({"extra": {"NumberOfFrames": 2}}, "multi-frame"),
        ({"spacing": (0.9, 0.5)}, "PixelSpacing"),
    ],
)
def test_inconsistent_file_refused(series_factory, change, expected):
    folder, _ = series_factory(n=4)
    kwargs = {"shape": (6, 8), **change}
    make_series(folder, n=1, names=["odd.dcm"], origin=(-10, -20, 38), **kwargs)
    with pytest.raises(DicomSeriesError, match=expected) as err:
        read_dicom_series(folder)
    assert "odd.dcm" in str(err.value) or "slice000.dcm" in str(err.value)
    assert "Fix:" in str(err.value)
    no_secrets(str(err.value))


def test_non_orthogonal_orientation_refused(series_factory):
    folder, _ = series_factory(orientation=(1, 0, 0, 0.2, 0.98, 0))
    with pytest.raises(DicomSeriesError, match="not two orthogonal unit vectors"):
        read_dicom_series(folder)


def test_enhanced_ct_sop_class_refused(series_factory):
    folder, _ = series_factory(n=1, extra={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2.1"})
    with pytest.raises(DicomSeriesError, match="Enhanced CT"):
        read_dicom_series(folder)


def test_single_slice_gets_thickness_and_warning(series_factory):
    folder, stored = series_factory(n=1)
    image = read_dicom_series(folder)
    assert image.shape == (8, 6, 1) and image.spacing[2] == pytest.approx(2.0)
    assert any("single-slice" in w for w in image.meta["warnings"])


def test_single_file_path_reads_its_series(series_factory):
    folder, _ = series_factory(n=5)
    assert read_image(folder / "slice002.dcm").shape == (8, 6, 5)


def test_no_dicom_and_missing_folder(tmp_path):
    (tmp_path / "a.xml").write_text("<a/>")
    assert find_series(tmp_path) == []
    with pytest.raises(ImageReadError, match="No DICOM image file found"):
        read_dicom_series(tmp_path)
    (tmp_path / "notes").write_text("no suffix, not DICOM")
    with pytest.raises(ImageReadError, match="not a DICOM image file"):
        read_image(tmp_path / "notes")
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nothing")


def test_options_are_validated_and_default_from_config():
    opts = DicomReadOptions.from_config()
    assert (opts.on_gap, opts.on_tilt, opts.on_duplicate) == ("error", "resample", "drop_identical")
    with pytest.raises(ConfigError, match="did you mean 'interpolate'"):
        DicomReadOptions.from_config(on_gap="interpolat")
    with pytest.raises(ConfigError, match="Unknown DICOM read option"):
        DicomReadOptions.from_config(on_gaps="error")
    assert opts.replace(on_tilt="error").on_tilt == "error"
