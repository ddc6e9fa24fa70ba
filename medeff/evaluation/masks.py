"""Reading label maps for segmentation evaluation, in one geometry convention, and putting two of them on one grid.

Every mask is read through :mod:`medeff.io` (NIfTI, NRRD, MetaImage) or, for a DICOM Segmentation object, with
pydicom here. Geometry is always medeff's :class:`~medeff.io.base.ImageData` convention: spacing per array axis,
origin and direction in LPS (as DICOM and ITK), so the same mask stored in any format has the same grid.

A DICOM SEG stores only the frames that hold a segment, each with its own position; it is returned as
:class:`SegFrames` and drawn onto the grid of the mask it is compared with (:func:`masks_on_one_grid`), which needs
every frame pixel to fall on a voxel centre of that grid (frames cut from the source slices, as medeff and other
tools write them). The label value of a segment is its segment number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medeff.errors import ImageReadError, InputError
from medeff.io.base import ImageData

__all__ = ["MAX_LABEL", "SegFrames", "binary_dice", "read_mask", "read_dicom_seg", "check_labels", "masks_on_one_grid",
           "is_dicom_seg"]

#: Largest label value accepted in a mask. Label maps of CT atlases stay far below it; a larger value is a corrupt
#: or mis-typed file (and would make per-label tables as large as the value).
MAX_LABEL = 65535
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_ON_VOXEL = 0.05  # a frame pixel must lie within this fraction of a voxel of a voxel centre


@dataclass
class SegFrames:
    """The frames of a DICOM SEG as label frames with their world positions (LPS, mm).

    Attributes:
        frames: ``(n, rows, columns)`` label frames (segment number where set, else 0), one per distinct position.
        positions: ``(n, 3)`` ImagePositionPatient of each frame (centre of its first pixel).
        orientation: ImageOrientationPatient (row direction, then column direction).
        pixel_spacing: (between rows, between columns) in mm.
        slice_spacing: SpacingBetweenSlices, when the file gives it.
        meta: ``format`` and ``source`` as :class:`ImageData` has them.
    """

    frames: np.ndarray
    positions: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_spacing: float | None
    meta: dict = field(default_factory=dict)


def is_dicom_seg(path: Path) -> bool:
    """Whether ``path`` is a DICOM file holding a Segmentation object."""
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] != b"DICM":
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # noqa: BLE001 - an unreadable header is not a SEG; the image reader reports it
        return False
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or str(ds.get("Modality", "")) == "SEG"


def read_mask(path: str | Path) -> ImageData | SegFrames:
    """Read an integer label map (NIfTI, NRRD, MetaImage or DICOM SEG) with its geometry in LPS.

    Raises:
        ImageReadError: the file is missing or unreadable, or holds non-integer, NaN, negative or huge values.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"Mask file '{path}' does not exist.", hint="check the paths in the index.",
                             path=str(path))
    if is_dicom_seg(path):
        seg = read_dicom_seg(path)
        check_labels(seg.frames, path)
        return seg
    from medeff.io.api import read_image

    try:
        image = read_image(path)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a user-facing error naming the file
        raise ImageReadError(f"Mask file '{path}' cannot be read ({type(exc).__name__}: {exc}).",
                             hint="check that it is a valid NIfTI/NRRD/MHA label map or DICOM SEG.",
                             path=str(path)) from exc
    if image.ndim != 3 or image.array.ndim != 3:
        raise ImageReadError(f"Mask file '{path}' has shape {image.array.shape}; a 3D label map is expected.",
                             hint="write one 3D integer label map per case.", path=str(path))
    arr = image.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ImageReadError(f"Mask file '{path}' holds non-integer or NaN values; a label map is expected.",
                                 hint="write masks as integer label maps (0 = background).", path=str(path))
    check_labels(arr, path)
    if not np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.int32)
    # header values are often float32: round so that the same grid read from two formats compares equal
    image.array = np.asarray(arr)
    image.spacing = tuple(round(float(s), 6) for s in image.spacing)
    return image


def check_labels(arr: np.ndarray, path: str | Path) -> None:
    """Refuse negative label values and values above :data:`MAX_LABEL`, naming the file and the value.

    Raises:
        ImageReadError: such a value occurs.
    """
    if arr.size == 0:
        return
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise ImageReadError(f"Mask file '{path}' holds the negative label value {lo:g}.",
                             hint="label maps use 0 for background and positive integers for labels.", path=str(path))
    if hi > MAX_LABEL:
        raise ImageReadError(f"Mask file '{path}' holds the label value {int(hi)}, above the largest accepted label "
                             f"value {MAX_LABEL}: the file is corrupt or not a label map.",
                             hint="check the file (a label map holds small integers: 0 = background, 1, 2, ...); "
                             "relabel it, or map its values with segmentation.reference_remap.", path=str(path))


# --- DICOM SEG -------------------------------------------------------------------------------------------------------

def read_dicom_seg(path: str | Path) -> SegFrames:
    """Read a BINARY DICOM Segmentation object into label frames (segment number per set pixel).

    Raises:
        ImageReadError: the file is unreadable, not a BINARY SEG, lacks plane positions, or two segments claim one
            pixel (a label map cannot hold both).
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise ImageReadError(f"DICOM SEG '{path}' cannot be read ({type(exc).__name__}: {exc}).",
                             hint="check that the file is complete.", path=str(path)) from exc
    kind = str(ds.get("SegmentationType", ""))
    if kind != "BINARY":
        raise ImageReadError(f"DICOM SEG '{path}' is of type {kind or 'unknown'}; evaluation reads BINARY SEGs.",
                             hint="export the segmentation as a BINARY SEG or as a NIfTI/NRRD label map.",
                             path=str(path))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    pixels = pixels.reshape(n, rows, cols)
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != n:
        raise ImageReadError(f"DICOM SEG '{path}' has {n} frames but {len(per_frame)} per-frame descriptions.",
                             hint="re-export the SEG.", path=str(path))

    def item(frame, name):
        for group in (frame, shared):
            if group is not None and name in group:
                return group[name].value[0]
        raise ImageReadError(f"DICOM SEG '{path}' lacks {name}; its frames cannot be placed in space.",
                             hint="export a SEG with plane positions (as derived from CT slices).", path=str(path))

    measures = item(per_frame[0] if per_frame else None, "PixelMeasuresSequence")
    orientation = np.asarray([float(v) for v in item(per_frame[0] if per_frame else None,
                                                     "PlaneOrientationSequence").ImageOrientationPatient])
    spacing = tuple(float(v) for v in measures.PixelSpacing)
    slice_spacing = float(measures.SpacingBetweenSlices) if measures.get("SpacingBetweenSlices") else None
    positions, numbers = [], []
    for frame in per_frame:
        positions.append([float(v) for v in item(frame, "PlanePositionSequence").ImagePositionPatient])
        numbers.append(int(item(frame, "SegmentIdentificationSequence").ReferencedSegmentNumber))
    positions_arr = np.round(np.asarray(positions, dtype=float).reshape(n, 3), 4)
    keys, inverse = np.unique(positions_arr, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    frames = np.zeros((len(keys), rows, cols), dtype=np.int32)
    for f in range(n):
        on = pixels[f] > 0
        target = frames[inverse[f]]
        if np.any(target[on] != 0):
            raise ImageReadError(f"DICOM SEG '{path}': segments {sorted({int(v) for v in target[on] if v})} and "
                                 f"{numbers[f]} overlap, which a label map cannot hold.",
                                 hint="evaluate overlapping segments from separate files, one label each.",
                                 path=str(path))
        target[on] = numbers[f]
    return SegFrames(frames=frames, positions=keys, orientation=orientation, pixel_spacing=spacing,
                     slice_spacing=slice_spacing, meta={"format": "dicom_seg", "source": str(path)})


def _frame_grid(segs: list[SegFrames], where: str) -> ImageData:
    """A grid holding every frame of ``segs``: axes along the rows, columns and frame normal (LPS)."""
    first = segs[0]
    for s in segs[1:]:
        if not (np.allclose(s.orientation, first.orientation, atol=1e-4)
                and np.allclose(s.pixel_spacing, first.pixel_spacing, atol=1e-4)
                and s.frames.shape[1:] == first.frames.shape[1:]):
            raise InputError(f"{where}: the two DICOM SEGs have frames of different orientation, pixel spacing or "
                             "size, so they share no grid.", hint="export both on the same source series.")
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.vstack([s.positions for s in segs])
    along = positions @ normal
    in_plane = positions - np.outer(along, normal)
    if np.abs(in_plane - in_plane[0]).max() > 1e-2:
        raise InputError(f"{where}: the frames of the DICOM SEG are not stacked on one grid (their in-plane "
                         "positions differ).", hint="compare the SEG with a NIfTI/NRRD mask of its source grid.")
    steps = np.diff(np.unique(np.round(along, 3)))
    spacing = first.slice_spacing or (float(steps.min()) if len(steps) else 1.0)
    k = (along - along.min()) / spacing
    if np.abs(k - np.round(k)).max() > _ON_VOXEL:
        raise InputError(f"{where}: the frame positions of the DICOM SEG are not multiples of its slice spacing "
                         f"{spacing:g} mm.", hint="compare the SEG with a NIfTI/NRRD mask of its source grid.")
    rows, cols = first.frames.shape[1:]
    origin = positions[int(np.argmin(along))]
    direction = np.stack([row_dir, col_dir, normal], axis=1)  # index axes: column index, row index, frame
    shape = (cols, rows, int(np.round(k.max())) + 1)
    return ImageData(np.zeros(shape, np.int32), (first.pixel_spacing[1], first.pixel_spacing[0], spacing),
                     tuple(origin), direction, meta={"format": "dicom_seg"})


def _draw(seg: SegFrames, grid: ImageData, where: str) -> ImageData:
    """``seg``'s frames drawn onto ``grid`` (voxel for voxel); refused when a set pixel misses a voxel centre."""
    to_index = np.linalg.inv(grid.affine_lps)
    dr, dc = seg.pixel_spacing
    row_dir, col_dir = seg.orientation[:3], seg.orientation[3:]
    per_col = to_index[:3, :3] @ (row_dir * dc)  # one step along a row (next column)
    per_row = to_index[:3, :3] @ (col_dir * dr)  # one step down a column (next row)
    out = np.zeros(grid.shape, dtype=np.int32)
    for frame, pos in zip(seg.frames, seg.positions):
        r, c = np.nonzero(frame)
        if not len(r):
            continue
        start = to_index[:3, :3] @ pos + to_index[:3, 3]
        idx = start[:, None] + per_row[:, None] * r + per_col[:, None] * c
        near = np.round(idx)
        if np.abs(idx - near).max() > _ON_VOXEL:
            raise InputError(f"{where}: the frames of DICOM SEG '{seg.meta.get('source')}' do not lie on the voxel "
                             "grid of the mask it is compared with.",
                             hint="compare masks on the same grid (the SEG's source series).")
        near = near.astype(np.int64)
        if any(near[d].min() < 0 or near[d].max() >= n for d, n in enumerate(grid.shape)):
            raise InputError(f"{where}: DICOM SEG '{seg.meta.get('source')}' reaches outside the grid of the mask it "
                             "is compared with.", hint="compare masks on the same grid (the SEG's source series).")
        out[near[0], near[1], near[2]] = frame[r, c]
    return ImageData(out, grid.spacing, grid.origin, grid.direction, meta=dict(seg.meta))


def masks_on_one_grid(pred: ImageData | SegFrames, ref: ImageData | SegFrames,
                      where: str) -> tuple[ImageData, ImageData]:
    """Both masks as :class:`ImageData`; a DICOM SEG is drawn onto the other mask's grid (two SEGs: onto a grid
    holding the frames of both)."""
    if isinstance(pred, SegFrames) and isinstance(ref, SegFrames):
        grid = _frame_grid([pred, ref], where)
        return _draw(pred, grid, where), _draw(ref, grid, where)
    if isinstance(pred, SegFrames):
        return _draw(pred, ref, where), ref
    if isinstance(ref, SegFrames):
        return pred, _draw(ref, pred, where)
    return pred, ref


def binary_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks of one shape; NaN when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else float("nan")
