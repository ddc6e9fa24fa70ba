"""NIfTI / NRRD / MetaImage reading and writing: geometry kept exactly, scaling handled, writes atomic."""

from __future__ import annotations

import numpy as np
import pytest

from medeff.errors import ImageReadError, InputError, OutputExistsError
from medeff.io import ImageData, image_format, read_image, write_image


def oblique_image(rng, dtype=np.int16) -> ImageData:
    theta = np.radians(17.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    direction = rot @ np.diag([1.0, -1.0, 1.0])  # oblique and flipped j axis
    array = rng.integers(-1000, 1000, size=(7, 5, 4)).astype(dtype)
    return ImageData(array, (0.7, 1.3, 2.5), (-12.5, 40.25, -300.0), direction, meta={"format": "test"})


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_round_trip_keeps_values_and_geometry(tmp_path, rng, suffix, dtype):
    image = oblique_image(rng, dtype)
    out = write_image(image, tmp_path / f"img{suffix}")
    back = read_image(out)
    assert back.array.dtype == image.array.dtype
    np.testing.assert_array_equal(back.array, image.array)
    assert back.same_geometry(image, atol=1e-5)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_our_geometry_agrees_with_simpleitk_reading_our_file(tmp_path, rng, suffix):
    import SimpleITK as sitk

    image = oblique_image(rng)
    out = write_image(image, tmp_path / f"img{suffix}")
    ref = sitk.ReadImage(str(out))
    np.testing.assert_allclose(ref.GetOrigin(), image.origin, atol=1e-4)
    np.testing.assert_allclose(ref.GetDirection(), image.direction.ravel(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref).transpose(2, 1, 0), image.array)


def test_nifti_writer_sets_qform_and_sform(tmp_path, rng):
    import nibabel as nib

    image = oblique_image(rng)
    img = nib.load(write_image(image, tmp_path / "a.nii.gz"))
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), image.affine_ras, atol=1e-5)
    np.testing.assert_allclose(img.affine, image.affine_ras, atol=1e-6)


def test_nifti_scaling(tmp_path):
    import nibabel as nib

    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)

    def save_with_scaling(path, slope, inter):
        nib.save(nib.Nifti1Image(raw, np.eye(4)), path)  # nibabel resets scl_* on save: patch the header after
        header = nib.load(path).header.copy()
        header["scl_slope"], header["scl_inter"] = slope, inter
        with open(path, "r+b") as fh:
            header.write_to(fh)

    save_with_scaling(tmp_path / "scaled.nii", 2.0, -10.0)
    scaled = read_image(tmp_path / "scaled.nii")
    assert scaled.array.dtype == np.float32
    np.testing.assert_allclose(scaled.array, raw * 2.0 - 10.0)
    save_with_scaling(tmp_path / "nan.nii", np.nan, np.nan)  # NaN means "no scaling"
    plain = read_image(tmp_path / "nan.nii")
    assert plain.array.dtype == np.int16 and not isinstance(plain.array, np.memmap)
    np.testing.assert_array_equal(plain.array, raw)
    save_with_scaling(tmp_path / "zero.nii", 0.0, 5.0)  # slope 0 also means "no scaling"
    np.testing.assert_array_equal(read_image(tmp_path / "zero.nii").array, raw)


def test_nifti_qform_sform_disagreement_is_noted(tmp_path):
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    img.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    img.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=2)
    nib.save(img, tmp_path / "q.nii")
    image = read_image(tmp_path / "q.nii")
    assert image.spacing == pytest.approx((2, 2, 2))
    assert any("sform" in w for w in image.meta["warnings"])


def test_nifti_ras_affine_maps_to_lps(tmp_path):
    import nibabel as nib

    affine = np.diag([-0.8, 0.8, 3.0, 1.0])  # LAS storage
    affine[:3, 3] = (100.0, -50.0, 20.0)
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), affine), tmp_path / "las.nii.gz")
    image = read_image(tmp_path / "las.nii.gz")
    assert image.origin == pytest.approx((-100.0, 50.0, 20.0))
    np.testing.assert_allclose(image.direction, np.diag([1.0, -1.0, 1.0]))


def test_sheared_nifti_refused(tmp_path):
    import nibabel as nib

    affine = np.eye(4)
    affine[0, 1] = 0.5
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), affine), tmp_path / "shear.nii")
    with pytest.raises(ImageReadError, match="sheared"):
        read_image(tmp_path / "shear.nii")


def test_corrupt_and_unknown_files(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(ImageReadError, match="broken.nii.gz"):
        read_image(bad)
    (tmp_path / "x.xyz").write_bytes(b"")
    with pytest.raises(ImageReadError, match="Unknown image type"):
        read_image(tmp_path / "x.xyz")
    (tmp_path / "x.png").write_bytes(b"")  # a known raster type, but empty
    with pytest.raises(ImageReadError, match="x.png"):
        read_image(tmp_path / "x.png")
    with pytest.raises(InputError, match="apply to DICOM only"):
        read_image(write_image(oblique_image(np.random.default_rng(1)), tmp_path / "a.mha"), on_gap="error")
    with pytest.raises(InputError, match="unknown output type"):
        write_image(oblique_image(np.random.default_rng(1)), tmp_path / "a.png")


def test_overwrite_false_refuses_existing(tmp_path, rng):
    image = oblique_image(rng)
    out = write_image(image, tmp_path / "a.nii.gz")
    with pytest.raises(OutputExistsError, match="a.nii.gz"):
        write_image(image, out, overwrite=False)


def test_failed_write_leaves_no_output(tmp_path, rng, monkeypatch):
    import nibabel as nib

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_image(oblique_image(rng), tmp_path / "a.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_bool_and_int64_arrays_are_written_safely(tmp_path, rng):
    image = oblique_image(rng)
    mask = ImageData(image.array > 0, image.spacing, image.origin, image.direction)
    back = read_image(write_image(mask, tmp_path / "m.nii.gz"))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask.array)
    labels = ImageData(image.array.astype(np.int64), image.spacing, image.origin, image.direction)
    assert read_image(write_image(labels, tmp_path / "l.nii.gz")).array.dtype == np.int32


def test_image_format():
    assert image_format("a/b.NII.GZ") == "nifti"
    assert image_format("scan.mha") == "itk"
    assert image_format("IM0001") == "dicom"


def test_shared_nifti_matches_simpleitk(shared_data):
    import SimpleITK as sitk

    path = shared_data / "ct_organs_totalsegmentator/example_ct_sm.nii.gz"
    image = read_image(path)
    ref = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    np.testing.assert_allclose(image.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.direction.ravel(), ref.GetDirection(), atol=1e-4)
    np.testing.assert_allclose(image.spacing, ref.GetSpacing(), atol=1e-4)


def test_2d_images(tmp_path, rng):
    theta = np.radians(30.0)
    direction = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    image = ImageData(rng.integers(0, 255, size=(6, 4)).astype(np.uint8), (0.5, 0.8), (3.0, -4.0), direction)
    back = read_image(write_image(image, tmp_path / "a.mha"))
    assert back.ndim == 2 and back.same_geometry(image, atol=1e-6)
    np.testing.assert_array_equal(back.array, image.array)
    nii = read_image(write_image(image, tmp_path / "a.nii.gz"))  # NIfTI is 3D: one slice, k spacing 1 mm
    assert nii.shape == (6, 4, 1) and nii.spacing == pytest.approx((0.5, 0.8, 1.0))
    np.testing.assert_allclose(nii.direction[:2, :2], direction, atol=1e-6)
    np.testing.assert_array_equal(nii.array[:, :, 0], image.array)
