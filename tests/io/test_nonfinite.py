"""NaN/inf voxels are refused by every reader, found in the stored values before scaling, windowing or casting."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medeff.errors import ImageReadError, NonFiniteImageError
from medeff.io import read_image
from medeff.io.base import require_finite


def _volume(rng) -> np.ndarray:
    return rng.normal(0, 100, size=(6, 5, 4)).astype(np.float32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nifti_with_nonfinite_voxels_is_refused(tmp_path, rng, bad):
    arr = _volume(rng)
    arr[1, 2, 3] = bad
    arr[0, 0, 0] = bad
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    with pytest.raises(NonFiniteImageError) as info:
        read_image(path)
    text = str(info.value)
    n_nan, n_inf = (2, 0) if np.isnan(bad) else (0, 2)
    assert "ct.nii.gz" in text and f"{n_nan} NaN and {n_inf} infinite voxel(s) of 120" in text
    assert "Fix:" in text and isinstance(info.value, ImageReadError)


def test_nifti_nan_is_found_in_the_stored_values_before_scaling(tmp_path, rng):
    # a NaN stored value with a real scl_slope: refused as a NaN voxel, not as a scaling overflow
    arr = _volume(rng)
    arr[2, 2, 2] = np.nan
    img = nib.Nifti1Image(arr, np.eye(4))
    img.header.set_slope_inter(2.0, -10.0)
    path = tmp_path / "scaled.nii"
    nib.save(img, str(path))
    with pytest.raises(NonFiniteImageError, match="1 NaN and 0 infinite"):
        read_image(path)


def test_finite_nifti_still_reads(tmp_path, rng):
    arr = _volume(rng)
    path = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    np.testing.assert_array_equal(read_image(path).array, arr)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_with_nonfinite_voxels_are_refused(tmp_path, rng, suffix):
    arr = _volume(rng)
    arr[3, 1, 0] = np.inf
    arr[4, 1, 0] = np.nan
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(arr.transpose(2, 1, 0)), str(path))
    with pytest.raises(NonFiniteImageError) as info:
        read_image(path)
    assert path.name in str(info.value) and "1 NaN and 1 infinite" in str(info.value)


def test_dicom_rescale_overflowing_float32_is_refused(series_factory):
    # stored pixels are integers; RescaleSlope 1e38 makes every value above 3 infinite in float32
    folder, stored = series_factory("huge", slope=1e38, intercept=0.0)
    with pytest.raises(NonFiniteImageError) as info:
        read_image(folder)
    text = str(info.value)
    n_inf = int(np.count_nonzero(stored.astype(np.float64) * 1e38 > np.finfo(np.float32).max))
    assert n_inf > 0 and "'huge'" in text and f"0 NaN and {n_inf} infinite" in text
    assert "RescaleSlope" in text


def test_require_finite_is_free_for_integer_arrays():
    class NoMath(np.ndarray):
        def min(self, *a, **k):  # would be called by the float path
            raise AssertionError("integer arrays must not be scanned")

        max = min

    require_finite(np.zeros((4, 4), np.int16).view(NoMath), "x.nii")
    require_finite(np.zeros(0, np.float32), "empty.nii")
    with pytest.raises(NonFiniteImageError, match="'x.nii' holds 1 NaN"):
        require_finite(np.array([1.0, np.nan], np.float64), "x.nii")
    with pytest.raises(NonFiniteImageError, match="0 NaN and 1 infinite"):
        require_finite(np.array([1 + 1j, complex(np.inf, 0)]), "c.nii")
