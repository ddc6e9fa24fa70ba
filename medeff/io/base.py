"""The image contract shared by every reader and writer: an array plus the geometry that places it.

Conventions (the same as ITK/SimpleITK, DICOM and MONAI's ITK reader):

* ``array`` is indexed ``[i, j, k]`` (x fastest in the file, i.e. the transpose of SimpleITK's
  ``GetArrayFromImage`` which is ``[k, j, i]``). 2D images have two axes; a trailing channel axis is
  not part of the contract (multi-channel images are lists of ImageData).
* ``spacing`` is in millimetres per index axis ``(si, sj, sk)``.
* ``origin`` is the world position (mm, **LPS** as in DICOM) of voxel ``[0, 0, 0]``'s centre.
* ``direction`` is a ``(ndim, ndim)`` matrix whose *columns* are the world directions (LPS) of the
  index axes, exactly SimpleITK's ``GetDirection()`` reshaped row-major.
* ``affine_ras`` gives the 4x4 voxel-to-world matrix in RAS, the convention of NIfTI and nibabel.

Geometry travels with the data to the end: predictions are written with the source geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medeff.errors import NonFiniteImageError

__all__ = ["ImageData", "LPS_TO_RAS", "require_finite"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


NONFINITE_HINT = ("repair or re-export the image: replace NaN/inf with a real value (e.g. the background, -1024 HU "
                  "for air) or remove the case.")


def require_finite(array: Any, source: Any, *, what: str = "Image", hint: str = NONFINITE_HINT,
                   name: str | None = None) -> None:
    """Raise :class:`NonFiniteImageError` when ``array`` holds NaN or infinite values.

    Integer and boolean arrays cannot hold them and return at once; float arrays cost one min/max pass (the
    counting pass runs only when something is wrong).

    Args:
        array: the stored values (check them before any windowing, clipping or casting).
        source: the file or folder named in the message.
        what: how the message names the source, e.g. ``"NIfTI file"``.
        hint: how to fix it.
        name: the whole name used in the message instead of ``what 'source'`` (e.g. a DICOM series label).

    Raises:
        NonFiniteImageError: NaN or +-inf present; the message names ``source`` and both counts.
    """
    arr = np.asarray(array)
    if arr.dtype.kind not in "fc" or arr.size == 0:
        return
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            if np.isfinite(arr.min()) and np.isfinite(arr.max()):
                return
    elif np.isfinite(arr).all():
        return
    n_nan = int(np.count_nonzero(np.isnan(arr)))
    n_inf = int(np.count_nonzero(np.isinf(arr)))
    name = name or f"{what} '{source}'"
    raise NonFiniteImageError(
        f"{name} holds {n_nan} NaN and {n_inf} infinite voxel(s) of {arr.size} in its stored values; medeff does "
        "not window, clip or guess such voxels.", hint=hint, path=str(source))


@dataclass
class ImageData:
    """An image array with its geometry and non-identifying metadata.

    Attributes:
        array: voxel values indexed ``[i, j, k]`` (see module docstring).
        spacing: mm per index axis.
        origin: world position (LPS, mm) of the first voxel centre.
        direction: ``(ndim, ndim)`` direction cosines, columns are index axes in LPS.
        meta: free-form metadata (source format, modality, series UID, repairs applied, warnings).
            Readers never put patient identifiers here.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        nd = len(self.spacing)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(nd, nd)
        if len(self.origin) != nd:
            raise ValueError(f"origin has {len(self.origin)} values but spacing has {nd}.")
        if self.array.ndim < nd:
            raise ValueError(f"array has {self.array.ndim} axes but the geometry describes {nd}.")

    @property
    def ndim(self) -> int:
        """Number of spatial axes."""
        return len(self.spacing)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def affine_lps(self) -> np.ndarray:
        """``(ndim+1, ndim+1)`` voxel index -> world (LPS, mm) matrix."""
        nd = self.ndim
        aff = np.eye(nd + 1)
        aff[:nd, :nd] = self.direction @ np.diag(self.spacing)
        aff[:nd, nd] = self.origin
        return aff

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 voxel index -> world (RAS, mm) matrix, as NIfTI/nibabel use (3D images only)."""
        if self.ndim != 3:
            raise ValueError(f"affine_ras is defined for 3D images; this image has {self.ndim} spatial axes.")
        return LPS_TO_RAS @ self.affine_lps

    def same_geometry(self, other: ImageData, *, atol: float = 1e-4) -> bool:
        """True when ``other`` has the same grid: shape, spacing, origin and direction within ``atol``."""
        return (
            self.shape[: self.ndim] == other.shape[: other.ndim]
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    @classmethod
    def from_affine_ras(cls, array: np.ndarray, affine: np.ndarray, meta: dict[str, Any] | None = None) -> ImageData:
        """Build from a NIfTI-style RAS affine (3D)."""
        lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
        m = lps[:3, :3]
        spacing = np.linalg.norm(m, axis=0)
        if np.any(spacing <= 0):
            raise ValueError("affine has a zero-length axis (singular); the image geometry is invalid.")
        return cls(array=array, spacing=tuple(spacing), origin=tuple(lps[:3, 3]), direction=m / spacing,
                   meta=dict(meta or {}))
