"""NIfTI (.nii / .nii.gz) reading and writing through nibabel, keeping the geometry exact.

Reading: one 3D volume per file (a trailing axis of length 1 is dropped and noted; a real 4D file is refused).
The affine is nibabel's best affine (sform when its code is set, else qform); a disagreement
between set qform and sform is logged and noted in ``meta["warnings"]``. ``scl_slope``/``scl_inter`` are
applied in float32 only when they change the values (a NaN or zero slope means "no scaling", as the
NIfTI standard says), so integer label maps stay integers.
Writing: qform and sform both hold the affine (code 1, scanner), units are mm.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medeff.errors import ImageReadError, InputError
from medeff.io.base import ImageData, require_finite
from medeff.utils.atomic import atomic_path
from medeff.utils.logging import get_logger

__all__ = ["read_nifti", "write_nifti", "spatial_shape"]

log = get_logger(__name__)

MIN_SPACING_MM, MAX_SPACING_MM = 1e-6, 1e5  # voxel sizes outside these bounds mean a corrupt affine


def read_nifti(path: str | os.PathLike) -> ImageData:
    """Read a NIfTI-1/2 file.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.

    Returns:
        :class:`ImageData`, 3D: trailing axes of length 1 (``X x Y x Z x 1``) are dropped and noted in
        ``meta["repairs"]``.

    Raises:
        NonFiniteImageError: the stored voxel values hold NaN or inf.
        ImageReadError: the file is unreadable, holds several volumes (4D/5D), or its affine is singular or sheared.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path), mmap=False)  # a memmap would keep the file open and writable
        raw = np.asanyarray(img.dataobj.get_unscaled()) if hasattr(img.dataobj, "get_unscaled") \
            else np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise ImageReadError(f"NIfTI file '{path}' cannot be read: {exc}.",
                             hint="check that the file is complete (re-copy or re-export it).", path=str(path)) from exc
    repairs: list[str] = []
    shape3 = spatial_shape(raw.shape, path)
    if shape3 != raw.shape:
        text = f"trailing axis of length 1 dropped (stored shape {tuple(raw.shape)}, read as 3D {shape3})"
        log.info("NIfTI '%s': %s.", path.name, text)
        repairs.append(text)
        raw = raw.reshape(shape3)
    require_finite(raw, path, what="NIfTI file")  # the stored values, before scl_slope/scl_inter
    header = img.header
    warnings: list[str] = []
    # nibabel moves scl_slope/scl_inter into the array proxy (NaN or 0 slope -> 1, NaN inter -> 0)
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below
        if np.isfinite(slope) and slope != 0 and (slope != 1 or (np.isfinite(inter) and inter != 0)):
            array = raw.astype(np.float32)
            array *= np.float32(slope)
            if np.isfinite(inter):
                array += np.float32(inter)
        elif np.isfinite(inter) and inter != 0:
            array = raw.astype(np.float32) + np.float32(inter)
        else:
            array = raw
    if array is not raw and array.size and not np.isfinite(array).all():
        raise ImageReadError(f"NIfTI file '{path}': scl_slope={slope:g} / scl_inter={inter:g} turn finite stored "
                             "values into NaN/inf (overflow).", hint="fix the header's scl_slope/scl_inter "
                             "(1 and 0 mean no scaling).", path=str(path))
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN quaternion is refused below, not warned about
        differ = qcode > 0 and scode > 0 and not np.allclose(img.get_qform(), img.get_sform(), atol=1e-3)
    if differ:
        text = f"qform and sform differ; the sform (code {scode}) is used."
        log.warning("NIfTI '%s': %s", path.name, text)
        warnings.append(text)
    affine = img.affine
    if affine is None or not np.isfinite(affine).all():
        raise ImageReadError(f"NIfTI file '{path}' has NaN/inf values in its affine (sform/qform).",
                             hint="fix the header's qform/sform.", path=str(path))
    try:
        image = ImageData.from_affine_ras(array, affine, meta={
            "format": "nifti", "source": str(path), "qform_code": qcode, "sform_code": scode,
            "scl_slope": slope if np.isfinite(slope) else None, "scl_inter": inter if np.isfinite(inter) else None,
            "repairs": repairs, "warnings": warnings})
    except ValueError as exc:
        raise ImageReadError(f"NIfTI file '{path}' has an invalid affine: {exc}", hint="fix the header's qform/sform.",
                             path=str(path)) from exc
    sp = np.asarray(image.spacing, dtype=float)
    if not (np.isfinite(sp).all() and (sp > MIN_SPACING_MM).all() and (sp < MAX_SPACING_MM).all()):
        raise ImageReadError(f"NIfTI file '{path}' has voxel sizes {tuple(float(v) for v in sp)} mm from its affine, "
                             f"outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm: the header is corrupt.",
                             hint="fix the header's qform/sform (pixdim).", path=str(path))
    d = image.direction
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
        raise ImageReadError(f"NIfTI file '{path}' has a sheared affine (axes not orthogonal); medeff grids are "
                             "orthogonal.", hint="resample the image onto an orthogonal grid first.", path=str(path))
    return image


def spatial_shape(shape: tuple[int, ...], path: str | os.PathLike) -> tuple[int, ...]:
    """``shape`` without trailing axes of length 1 beyond the third (``X x Y x Z x 1`` -> ``X x Y x Z``).

    Raises:
        ImageReadError: a 4th or later axis longer than 1 (a time series or several channels in one file).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) <= 3:
        return shape
    extra = shape[3:]
    if all(n == 1 for n in extra):
        return shape[:3]
    raise ImageReadError(
        f"NIfTI file '{path}' is {len(shape)}D with shape {shape}: it holds {int(np.prod(extra))} volumes, but "
        "medeff reads one 3D volume per file.",
        hint="split it into 3D files (e.g. `fslsplit`, or nibabel's `four_to_three`) and pass one file per volume; "
             "for several channels of one case, give one file per channel (nnU-Net names <case>_0000.nii.gz, "
             "<case>_0001.nii.gz, or ';'-separated paths in a CSV manifest).", path=str(path))


def write_nifti(image: ImageData, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``image`` as NIfTI-1 atomically; qform = sform = its RAS affine.

    Raises:
        InputError: the image is not 2D/3D or its dtype has no NIfTI equivalent.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    import nibabel as nib

    path = Path(path)
    array = image.array
    if image.ndim == 2:
        image = ImageData(array[:, :, None], tuple(image.spacing) + (1.0,), tuple(image.origin) + (0.0,),
                          np.block([[image.direction, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]]),
                          image.meta)
        array = image.array
    if image.ndim != 3:
        raise InputError(f"Cannot write a {image.ndim}D image to NIfTI '{path}'.", hint="write 2D or 3D images.")
    array = _nifti_safe(array, path)
    img = nib.Nifti1Image(array, image.affine_ras)
    img.header.set_xyzt_units("mm")
    img.set_qform(image.affine_ras, code=1)
    img.set_sform(image.affine_ras, code=1)
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
    return path


def _nifti_safe(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype in (np.int64, np.uint64):
        if array.size == 0 or (array.min() >= np.iinfo(np.int32).min and array.max() <= np.iinfo(np.int32).max):
            return array.astype(np.int32)
        raise InputError(f"Cannot write 64-bit integers beyond the int32 range to NIfTI '{path}'.",
                         hint="cast the array to float64 first.")
    if array.dtype.kind not in "iuf":
        raise InputError(f"Cannot write dtype {array.dtype} to NIfTI '{path}'.", hint="use an integer or float array.")
    return array
