"""2D raster images (JPEG, PNG, BMP, TIFF) read as greyscale :class:`ImageData`.

Screenshots and exported slices (e.g. public CT slice sets published as JPEG) carry no geometry and are often stored
as RGB. The reader returns one grey channel indexed ``[i, j]`` = ``[column, row]`` like every other medeff image:

* RGB(A) pixels become grey with the ITU-R BT.601 luma weights ``0.299 R + 0.587 G + 0.114 B`` (alpha dropped),
  rounded back to the input dtype; when the three channels are equal (grey saved as RGB) the values are kept
  exactly. The conversion is listed in ``meta["repairs"]``.
* Spacing is 1 mm per pixel, origin 0, identity direction, whatever the file says about print resolution (DPI is
  not a patient geometry); ``meta["warnings"]`` says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medeff.errors import ImageReadError
from medeff.io.base import ImageData

__all__ = ["RASTER_SUFFIXES", "read_raster", "to_grey"]

RASTER_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_grey(pixels: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Grey image from ``pixels`` ``[..., C]`` (C = 1, 2 grey+alpha, 3 RGB, 4 RGBA) or a 2D array.

    Returns:
        ``(grey, repair)``: the grey array (dtype kept) and a sentence describing the conversion, or None when
        nothing was changed.
    """
    a = np.asarray(pixels)
    if a.ndim == 2:
        return a, None
    c = a.shape[-1]
    if c in (1, 2):
        return a[..., 0], "alpha channel dropped" if c == 2 else None
    rgb = a[..., :3]
    note = " (alpha dropped)" if c == 4 else ""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].copy(), f"RGB with equal channels read as grey{note}"
    grey = rgb.astype(np.float64) @ np.asarray(LUMA_WEIGHTS)
    if a.dtype.kind in "ui":
        info = np.iinfo(a.dtype)
        grey = np.clip(np.rint(grey), info.min, info.max)
    return grey.astype(a.dtype), f"RGB converted to grey with BT.601 luma weights{note}"


def read_raster(path: str | os.PathLike) -> ImageData:
    """Read a 2D raster image as one grey channel (see the module docstring for the conversions).

    Raises:
        ImageReadError: the file cannot be decoded or is not 2D.
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(f"Image file '{path}' cannot be decoded ({last}).",
                             hint="check that the file is a complete JPEG/PNG/BMP/TIFF image (re-export it).",
                             path=str(path)) from exc
    if img.GetDimension() != 2:
        raise ImageReadError(f"Image file '{path}' has {img.GetDimension()} dimensions; raster images are read as 2D.",
                             hint="store one 2D slice per file, or convert volumes to NIfTI.", path=str(path))
    arr = sitk.GetArrayFromImage(img)  # [row, column(, channel)]
    grey, repair = to_grey(arr)
    grey = np.ascontiguousarray(grey.T)  # [i, j] = [column, row]
    return ImageData(array=grey, spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=np.eye(2),
                     meta={"format": path.suffix.lstrip(".").lower(), "source": str(path),
                           "repairs": [repair] if repair else [],
                           "warnings": ["no physical pixel spacing in a raster image: 1 mm per pixel assumed"]})
