"""4D files: a trailing axis of length 1 is dropped (noted); a file holding several volumes is refused clearly."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medeff.errors import ImageReadError
from medeff.io import read_image

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def _save(path, arr):
    nib.save(nib.Nifti1Image(arr, AFFINE), str(path))
    return path


def test_nifti_with_trailing_singleton_axis_reads_as_3d(tmp_path, rng, caplog):
    arr = rng.integers(-1000, 1000, size=(6, 5, 4, 1)).astype(np.int16)
    path = _save(tmp_path / "ct4d.nii.gz", arr)
    with caplog.at_level(logging.INFO, logger="medeff"):
        img = read_image(path)
    assert img.shape == (6, 5, 4) and img.spacing == pytest.approx((0.8, 0.8, 2.5))
    np.testing.assert_array_equal(img.array, arr[..., 0])
    assert any("trailing axis of length 1 dropped" in r for r in img.meta["repairs"])
    assert "ct4d.nii.gz" in caplog.text and "dropped" in caplog.text


def test_nifti_with_trailing_singleton_axis_goes_through_the_transforms(tmp_path, rng):
    """It used to reach MONAI as a (1, X, Y, Z, 1) array and fail there with a traceback."""
    import torch

    from medeff.data.transforms import eval_transforms

    arr = rng.normal(0, 100, size=(6, 5, 4, 1)).astype(np.float32)
    path = _save(tmp_path / "ct4d.nii.gz", arr)
    tf = eval_transforms({"orientation": "RAS", "spacing": [1.6, 1.6, 2.5]}, spatial_dims=3, has_label=False)
    out = torch.as_tensor(tf({"image": str(path)})["image"])
    assert out.ndim == 4 and out.shape[0] == 1 and out.shape[-1] == 4 and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (6, 5, 4, 1, 2)])
def test_nifti_with_several_volumes_is_refused(tmp_path, rng, shape):
    path = _save(tmp_path / "series4d.nii.gz", rng.integers(0, 100, size=shape).astype(np.int16))
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    text = str(info.value)
    assert "series4d.nii.gz" in text and f"{len(shape)}D with shape {shape}" in text
    assert "Fix: split it into 3D files" in text


def test_itk_4d_files(tmp_path, rng):
    vols = [rng.integers(0, 100, size=(4, 5, 6)).astype(np.int16) for _ in range(2)]  # SimpleITK order [k, j, i]
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(vols[0])]), str(tmp_path / "one.mha"))
    img = read_image(tmp_path / "one.mha")
    assert img.shape == (6, 5, 4) and img.direction.shape == (3, 3) and img.meta["repairs"]
    np.testing.assert_array_equal(img.array, vols[0].transpose(2, 1, 0))
    assert img.affine_ras.shape == (4, 4)
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(v) for v in vols]), str(tmp_path / "two.mha"))
    with pytest.raises(ImageReadError, match="two.mha' is 4D with size \\(6, 5, 4, 2\\)"):
        read_image(tmp_path / "two.mha")
