"""``read_image`` / ``write_image``: one entry point for every format, chosen by the path.

* a folder (or a file without a known image suffix that is DICOM) -> the DICOM series in it;
* ``.dcm`` / ``.ima`` file -> the series that file belongs to, read from its folder;
* ``.nii`` / ``.nii.gz`` -> nibabel; ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd`` -> SimpleITK;
* ``.jpg`` / ``.jpeg`` / ``.png`` / ``.bmp`` / ``.tif`` / ``.tiff`` -> one grey 2D channel (:mod:`medeff.io.raster`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medeff.errors import ImageReadError, InputError
from medeff.io.base import ImageData
from medeff.io.itk import ITK_SUFFIXES, read_itk, write_itk
from medeff.io.nifti import read_nifti, write_nifti
from medeff.io.options import DicomReadOptions
from medeff.io.raster import RASTER_SUFFIXES, read_raster

__all__ = ["read_image", "write_image", "image_format"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_WRITABLE = NIFTI_SUFFIXES + ITK_SUFFIXES


def image_format(path: str | os.PathLike) -> str:
    """``"dicom"``, ``"nifti"``, ``"itk"`` or ``"raster"`` for ``path`` (folders are DICOM); else ImageReadError."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    if name.endswith(DICOM_SUFFIXES) or "." not in name:
        return "dicom"
    raise ImageReadError(
        f"Unknown image type for '{path}'.",
        hint="use a DICOM folder or a file ending in "
        f"{', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES + RASTER_SUFFIXES + DICOM_SUFFIXES)}.",
        path=str(path))


def read_image(path: str | os.PathLike, **options: Any) -> ImageData:
    """Read an image or DICOM series, picking the reader from the path.

    Args:
        path: image file or DICOM folder.
        **options: for DICOM, ``series_uid``, ``description``, ``options`` (a :class:`DicomReadOptions`) and any
            single :class:`DicomReadOptions` field (e.g. ``on_tilt="error"``); other formats take none.

    Returns:
        :class:`ImageData` with geometry in LPS and ``meta["format"]``, ``meta["source"]``, ``meta["repairs"]``.

    Raises:
        ImageReadError: the path does not exist, its type is unknown, or it cannot be read.
        DicomSeriesError: the DICOM series is refused (see ``docs/data.md``).
        ConfigError: an unknown option.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"Image '{path}' does not exist.", hint="check the path.", path=str(path))
    kind = image_format(path)
    if kind == "dicom":
        return _read_dicom(path, options)
    if options:
        raise InputError(f"Options {sorted(options)} apply to DICOM only, not to '{path.name}'.",
                         hint="drop them for NIfTI/NRRD/MHA inputs.")
    if kind == "raster":
        return read_raster(path)
    return read_nifti(path) if kind == "nifti" else read_itk(path)


def _read_dicom(path: Path, options: dict[str, Any]) -> ImageData:
    from medeff.io.dicom import read_dicom_series

    opts = dict(options)
    series_uid, description = opts.pop("series_uid", None), opts.pop("description", None)
    base = opts.pop("options", None) or DicomReadOptions.from_config()
    read_opts = base.replace(**opts) if opts else base
    if path.is_file():
        from medeff.io.dicom_scan import find_series

        own = find_series(path)
        if not own:
            raise ImageReadError(f"'{path}' is not a DICOM image file.", hint="pass a DICOM file or folder, or a "
                                 "file ending in .nii/.nii.gz/.nrrd/.mha/.mhd.", path=str(path))
        series_uid = series_uid or own[0].series_uid or None
        path = path.parent
    return read_dicom_series(path, series_uid=series_uid, description=description, options=read_opts)


def write_image(image: ImageData, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``image`` atomically with its geometry: NIfTI via nibabel; NRRD/MHA/MHD via SimpleITK.

    Raises:
        InputError: unsupported suffix or dtype.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return write_nifti(image, path, overwrite=overwrite)
    if name.endswith(ITK_SUFFIXES):
        return write_itk(image, path, overwrite=overwrite)
    raise InputError(f"Cannot write '{path}': unknown output type.",
                     hint=f"end the file name in one of {', '.join(_WRITABLE)}.", path=str(path))
