"""NRRD / MetaImage (.nrrd, .nhdr, .mha, .mhd) reading and writing through SimpleITK.

SimpleITK's arrays are ``[k, j, i]``; :class:`ImageData` holds the transposed view ``[i, j, k]``.
``.mhd`` writes a header plus a ``.raw`` data file: both are written into a temporary folder beside the
output and moved into place data first, header last, so a reader never sees a header without its data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from medeff.errors import ImageReadError, InputError
from medeff.io.base import ImageData, require_finite
from medeff.utils.atomic import atomic_path, check_writable
from medeff.utils.logging import get_logger

__all__ = ["read_itk", "write_itk", "ITK_SUFFIXES"]

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")

log = get_logger(__name__)


def read_itk(path: str | os.PathLike) -> ImageData:
    """Read a file SimpleITK understands (NRRD, MetaImage, ...) with its geometry.

    Raises:
        NonFiniteImageError: the voxel values hold NaN or inf.
        ImageReadError: SimpleITK cannot read the file, or it holds several volumes (4D with a 4th axis longer
            than 1; a 4th axis of length 1 is dropped and noted in ``meta["repairs"]``).
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageReadError(f"Image file '{path}' cannot be read: {str(exc).strip().splitlines()[-1]}",
                             hint="check that the file (and its data file, for .mhd/.nhdr) is complete.",
                             path=str(path)) from exc
    nd = img.GetDimension()
    arr = sitk.GetArrayFromImage(img)
    require_finite(arr, path, what="Image file")
    spatial = tuple(range(nd - 1, -1, -1))
    arr = arr.transpose(spatial + tuple(range(nd, arr.ndim)))  # channel axis (vector images) stays last
    spacing, origin = img.GetSpacing(), img.GetOrigin()
    direction = np.array(img.GetDirection()).reshape(nd, nd)
    repairs: list[str] = []
    if nd > 3:
        size = tuple(int(n) for n in img.GetSize())
        if any(n != 1 for n in size[3:]):
            raise ImageReadError(
                f"Image file '{path}' is {nd}D with size {size}: it holds {int(np.prod(size[3:]))} volumes, but "
                "medeff reads one 3D volume per file.", hint="split it into 3D files and pass one file per volume "
                "(several channels of one case: one file per channel).", path=str(path))
        arr = arr.reshape(size[:3] + arr.shape[nd:])
        spacing, origin, direction = spacing[:3], origin[:3], direction[:3, :3]
        repairs.append(f"trailing axis of length 1 dropped (stored size {size}, read as 3D {size[:3]})")
        log.info("Image '%s': %s.", path.name, repairs[-1])
    return ImageData(array=arr, spacing=spacing, origin=origin, direction=direction,
                     meta={"format": path.suffix.lstrip(".").lower(), "source": str(path), "repairs": repairs,
                           "warnings": []})


def write_itk(image: ImageData, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``image`` with SimpleITK (format from the suffix), atomically, keeping spacing/origin/direction.

    Raises:
        InputError: the array's dtype cannot be written.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    import SimpleITK as sitk

    path = Path(path)
    nd = image.ndim
    array = image.array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "iuf":
        raise InputError(f"Cannot write dtype {array.dtype} to '{path}'.", hint="use an integer or float array.")
    spatial = tuple(range(nd - 1, -1, -1))
    arr = np.ascontiguousarray(array.transpose(spatial + tuple(range(nd, array.ndim))))
    img = sitk.GetImageFromArray(arr, isVector=array.ndim > nd)
    img.SetSpacing([float(s) for s in image.spacing])
    img.SetOrigin([float(o) for o in image.origin])
    img.SetDirection([float(v) for v in np.asarray(image.direction).ravel()])
    if path.suffix.lower() in (".mhd", ".nhdr"):
        return _write_with_sidecar(img, path, overwrite)
    with atomic_path(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=path.suffix.lower() in (".nrrd", ".mha"))
    return path


def _write_with_sidecar(img, path: Path, overwrite: bool) -> Path:
    import SimpleITK as sitk

    check_writable(path, overwrite=overwrite)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".tmp-{path.stem}-", dir=path.parent))
    try:
        sitk.WriteImage(img, str(tmpdir / path.name), useCompression=False)
        written = sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name)  # header last
        for item in written:
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path
