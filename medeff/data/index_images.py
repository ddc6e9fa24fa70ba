"""Read what the indexer needs from a case's files: cheap headers first, voxels only when asked.

NIfTI headers come from nibabel without touching voxel data; other single files go through SimpleITK's
``ReadImageInformation``; DICOM series through :func:`medeff.io.find_series` / :func:`medeff.io.read_dicom_series`;
array archives (``.npz``) are loaded once and cached. Arrays follow the :class:`medeff.io.ImageData` contract
(indexed ``[i, j, k]``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medeff.errors import ImageReadError

__all__ = ["Header", "is_nifti", "read_header", "read_voxels", "read_dicom_voxels", "load_archive_array", "reorient"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Header:
    """Geometry of an image without its voxels.

    Attributes:
        shape: spatial shape, indexed ``[i, j, k]``.
        spacing: mm per axis, or None when unknown (archives).
        origin: LPS position of the first voxel, or None.
        direction: flattened direction cosines (LPS, columns are index axes), or None.
        orientation: axis codes like ``"RAS"`` (nibabel convention), or None for 2D/unknown.
        dtype: voxel data type name.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None
    origin: tuple[float, ...] | None
    direction: tuple[float, ...] | None
    orientation: str | None
    dtype: str

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def same_grid(self, other: Header, *, atol: float) -> bool:
        """True when shape, spacing, origin and direction agree within ``atol`` (unknown parts are skipped)."""
        if self.shape != other.shape:
            return False
        for a, b in ((self.spacing, other.spacing), (self.origin, other.origin), (self.direction, other.direction)):
            if a is not None and b is not None and not np.allclose(a, b, atol=atol):
                return False
        return True

    @property
    def affine_lps(self) -> np.ndarray | None:
        """Index -> world (LPS, mm) matrix, or None when the geometry is unknown."""
        if self.spacing is None or self.origin is None or self.direction is None:
            return None
        nd = self.ndim
        aff = np.eye(nd + 1)
        aff[:nd, :nd] = np.asarray(self.direction).reshape(nd, nd) @ np.diag(self.spacing)
        aff[:nd, nd] = self.origin
        return aff

    def axis_map_to(self, other: Header, *, atol: float) -> tuple[tuple[int, ...], tuple[bool, ...]] | None:
        """How to put an array on this grid onto ``other``'s grid when both cover the same voxels.

        Returns ``(axes, flips)`` such that ``np.flip(arr.transpose(axes), [a for a, f in enumerate(flips) if f])``
        is ``arr`` resampled exactly onto ``other`` (a reorientation: axis permutation and flips, no
        interpolation), or None when the grids differ otherwise.
        """
        a, b = self.affine_lps, other.affine_lps
        if a is None or b is None or self.ndim != other.ndim:
            return None
        nd = self.ndim
        t = np.linalg.solve(b, a)  # this index -> other index
        lin, off = t[:nd, :nd], t[:nd, nd]
        if not np.allclose(lin, np.round(lin), atol=1e-3) or not np.allclose(np.abs(np.round(lin)).sum(0), 1):
            return None
        lin = np.round(lin).astype(int)
        axes, flips = [], []
        for out_axis in range(nd):
            src = int(np.flatnonzero(lin[out_axis])[0])
            flip = lin[out_axis, src] < 0
            if other.shape[out_axis] != self.shape[src]:
                return None
            want = other.shape[out_axis] - 1 if flip else 0
            if abs(off[out_axis] - want) * other.spacing[out_axis] > atol:
                return None
            axes.append(src)
            flips.append(bool(flip))
        return tuple(axes), tuple(flips)

    def describe(self) -> str:
        sp = "?" if self.spacing is None else "x".join(f"{s:g}" for s in self.spacing)
        org = "?" if self.origin is None else ",".join(f"{o:.2f}" for o in self.origin)
        return f"shape {list(self.shape)}, spacing {sp} mm, origin ({org})"


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _orientation(direction: np.ndarray) -> str | None:
    if direction.shape != (3, 3):
        return None
    import nibabel as nib

    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = lps_to_ras @ direction
    return "".join(nib.orientations.aff2axcodes(aff))


def _header_from_affine_ras(shape: tuple[int, ...], affine: np.ndarray, dtype: str) -> Header:
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    m = lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    spacing = np.where(spacing > 0, spacing, 1.0)
    direction = m / spacing
    nd = len(shape)
    if nd == 3:
        return Header(shape, tuple(map(float, spacing)), tuple(map(float, lps[:3, 3])),
                      tuple(map(float, direction.ravel())), _orientation(direction), dtype)
    return Header(shape, tuple(map(float, spacing[:nd])), tuple(map(float, lps[:nd, 3])),
                  tuple(map(float, direction[:nd, :nd].ravel())), None, dtype)


def _nifti_image(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise ImageReadError(
            f"Cannot read NIfTI file '{path}': {type(exc).__name__}: {exc}.",
            hint="check that the file is a complete .nii/.nii.gz (re-export or re-download it).",
            path=str(path),
        ) from exc


def read_header(path: str | os.PathLike) -> Header:
    """Geometry of a single image file without reading its voxels (NIfTI via nibabel, else SimpleITK).

    A NIfTI ``X x Y x Z x 1`` is 3D, as :func:`medeff.io.read_image` reads it.

    Raises:
        ImageReadError: the file cannot be read, or is a NIfTI file holding several volumes.
    """
    path = Path(path)
    if is_nifti(path):
        from medeff.io.nifti import spatial_shape

        img = _nifti_image(path)
        shape = spatial_shape(img.shape, path)  # X x Y x Z x 1 -> 3D; a real 4D file is refused
        return _header_from_affine_ras(shape, img.affine, str(img.get_data_dtype()))
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(
            f"Cannot read image file '{path}' ({str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}).",
            hint="use a format SimpleITK or nibabel reads (NIfTI, NRRD, MHA) or convert it with `medeff convert`.",
            path=str(path),
        ) from exc
    nd = reader.GetDimension()
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(nd, nd)
    return Header(tuple(int(s) for s in reader.GetSize()), tuple(map(float, reader.GetSpacing())),
                  tuple(map(float, reader.GetOrigin())), tuple(map(float, direction.ravel())),
                  _orientation(direction), sitk.GetPixelIDValueAsString(reader.GetPixelID()))


def read_voxels(path: str | os.PathLike) -> np.ndarray:
    """Voxels of a single image file indexed ``[i, j, k]`` (dtype kept where the format allows).

    Raises:
        ImageReadError: the file cannot be read.
    """
    path = Path(path)
    if is_nifti(path):
        img = _nifti_image(path)
        try:
            arr = np.asanyarray(img.dataobj)
        except Exception as exc:
            raise ImageReadError(
                f"Cannot read the voxels of '{path}': {type(exc).__name__}: {exc}.",
                hint="the file is probably truncated; re-export it.",
                path=str(path),
            ) from exc
        from medeff.io.nifti import spatial_shape

        return np.asarray(arr).reshape(spatial_shape(arr.shape, path))
    try:  # prefer the project's reader when present (it documents its repairs)
        from medeff.io import read_image  # type: ignore[attr-defined]
    except ImportError:
        read_image = None
    if read_image is not None:
        return np.asarray(read_image(path).array)
    import SimpleITK as sitk

    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).T
    except RuntimeError as exc:
        raise ImageReadError(f"Cannot read image file '{path}'.", hint="check the file format.",
                             path=str(path)) from exc


def read_dicom_voxels(folder: str | os.PathLike, series_uid: str | None):
    """Read a DICOM series through :func:`medeff.io.read_dicom_series`; returns ``(array, Header)``."""
    from medeff.io import read_dicom_series  # type: ignore[attr-defined]

    img = read_dicom_series(folder, series_uid=series_uid) if series_uid else read_dicom_series(folder)
    d = np.asarray(img.direction)
    hdr = Header(tuple(int(s) for s in img.array.shape[: img.ndim]), tuple(img.spacing), tuple(img.origin),
                 tuple(map(float, d.ravel())), _orientation(d), str(img.array.dtype))
    return np.asarray(img.array), hdr


@functools.lru_cache(maxsize=4)
def _load_npz(path: str, key: str, mtime: float) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        if key not in z.files:
            raise ImageReadError(
                f"Archive '{path}' has no array '{key}' (it holds {sorted(z.files)}).",
                hint="set archive.images_key / archive.labels_key to one of those names.",
                path=path,
            )
        return z[key]


def load_archive_array(path: str | os.PathLike, key: str) -> np.ndarray:
    """One array of an ``.npz`` archive (cached; the archive is read once per process).

    Raises:
        ImageReadError: the archive cannot be read or lacks ``key``.
    """
    path = Path(path)
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise ImageReadError(f"Archive '{path}' does not exist.", hint="check the path.", path=str(path)) from exc
    try:
        return _load_npz(str(path), key, mtime)
    except ImageReadError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageReadError(
            f"Cannot read archive '{path}': {type(exc).__name__}: {exc}.",
            hint="the archive must be a NumPy .npz without pickled objects.",
            path=str(path),
        ) from exc


def reorient(arr: np.ndarray, axis_map: tuple[tuple[int, ...], tuple[bool, ...]]) -> np.ndarray:
    """Apply an ``(axes, flips)`` map from :meth:`Header.axis_map_to` (exact, no interpolation)."""
    axes, flips = axis_map
    out = np.transpose(arr, axes)
    flip_axes = [a for a, f in enumerate(flips) if f]
    return np.flip(out, flip_axes) if flip_axes else out
