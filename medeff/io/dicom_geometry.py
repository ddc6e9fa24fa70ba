"""Validate the slices of one DICOM series and plan how they stack into a volume.

The plan sorts slices by their position along the slice normal (never by file name or InstanceNumber),
checks every assumption a volume needs, and lists the repairs the options allow:

* exact duplicate slices (same position, byte-identical pixels) are dropped;
* a gantry-tilted (sheared) series is shifted slice by slice onto an orthogonal grid;
* irregular slice steps (missing slices) are resampled onto a uniform grid, when asked for.

Everything else (mixed sizes or orientations, missing geometry tags, multi-frame files) is refused with a
:class:`DicomSeriesError` that names the series by a non-identifying label and the offending file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medeff.errors import DicomSeriesError
from medeff.io.dicom_scan import SliceHeader
from medeff.io.options import DicomReadOptions

__all__ = ["SeriesPlan", "plan_series"]


@dataclass
class SeriesPlan:
    """How the slices of a series become a volume.

    Attributes:
        slices: headers in stacking order (ascending along the slice normal), duplicates removed.
        normal_positions: position of each slice along the normal (mm).
        spacing, origin, direction: geometry of the output grid (LPS, columns of ``direction`` are axes).
        shifts: per-slice in-plane shift ``(rows, columns)`` in voxels onto the output grid (tilt repair) or None.
        pad: ``(rows_before, columns_before, rows_out, columns_out)`` of the output grid for the tilt repair.
        targets: output slice positions along the normal for gap interpolation, or None.
        repairs: human-readable repairs applied (go to ``meta["repairs"]``).
        warnings: other notes (go to ``meta["warnings"]``).
    """

    slices: list[SliceHeader]
    normal_positions: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    shifts: np.ndarray | None = None
    pad: tuple[int, int, int, int] | None = None
    targets: np.ndarray | None = None
    repairs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def plan_series(
    slices: list[SliceHeader],
    label: str,
    options: DicomReadOptions,
    pixels_equal: Callable[[SliceHeader, SliceHeader], bool],
) -> SeriesPlan:
    """Check ``slices`` (one series) and return the stacking plan.

    Args:
        slices: the series' file headers, in any order.
        label: non-identifying series name for messages.
        options: tolerances and repair policy.
        pixels_equal: compares the pixel data of two files (used for duplicate positions).

    Returns:
        The :class:`SeriesPlan`.

    Raises:
        DicomSeriesError: the series cannot be stacked into a volume under ``options``.
    """
    first = _check_files(slices, label, options)
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    pos = np.array([s.position for s in slices], dtype=np.float64)
    d = pos @ normal
    order = sorted(range(len(slices)), key=lambda i: (d[i], str(slices[i].path)))
    slices, pos, d = [slices[i] for i in order], pos[order], d[order]
    repairs: list[str] = []
    warnings: list[str] = []
    slices, pos, d = _drop_duplicates(slices, pos, d, label, options, pixels_equal, repairs)
    sx, sy = first.pixel_spacing[1], first.pixel_spacing[0]  # PixelSpacing = (row spacing, column spacing)

    if len(slices) == 1:
        sk = first.slice_thickness or 1.0
        warnings.append(f"single-slice series: slice spacing {sk:g} mm taken from SliceThickness (or 1 mm).")
        return SeriesPlan(slices, d, (sx, sy, sk), tuple(pos[0]), np.column_stack([row, col, normal]),
                          repairs=repairs, warnings=warnings)

    shifts, pad, origin = None, None, pos[0]
    rel = pos - pos[0]
    _check_line(slices, rel @ row, rel @ col, d, label, options)
    in_plane = np.column_stack([rel @ row / sx, rel @ col / sy])  # (columns, rows) offsets in voxels
    span = pos[-1] - pos[0]
    tilt = math.degrees(math.acos(min(1.0, abs(float(span @ normal)) / float(np.linalg.norm(span)))))
    if tilt > options.tilt_tolerance_deg:
        if options.on_tilt == "error":
            raise DicomSeriesError(
                f"DICOM series {label} is gantry-tilted by {tilt:.2f} degrees (slices are stacked along a direction "
                f"that is not their normal; first file '{slices[0].path}').",
                hint="pass on_tilt='resample' (CLI: --on-tilt resample) to resample it onto an orthogonal grid.",
                path=str(slices[0].path))
        shifts, pad, origin = _tilt_grid(in_plane, first, pos[0], row, col, sx, sy)
        repairs.append(f"gantry tilt of {tilt:.2f} degrees: slices shifted in-plane (linear interpolation) onto an "
                       f"orthogonal {pad[3]}x{pad[2]} grid; voxels outside the data set to {options.fill_value:g}.")

    steps = np.diff(d)
    # reference step: the smallest one (gaps only make steps longer) unless it is an outlier itself
    step = float(np.median(steps))
    step = float(steps.min()) if steps.min() >= 0.5 * step else step
    tol = max(options.spacing_rtol * step, options.spacing_atol_mm)
    bad = np.flatnonzero(np.abs(steps - step) > tol)
    targets = None
    if bad.size:
        i = int(bad[0])
        ratio = steps[i] / step
        what = (f"{round(ratio) - 1} missing slice(s)" if abs(ratio - round(ratio)) < 0.05 and ratio > 1.5
                else "a non-uniform slice step")
        worst = int(np.argmax(steps))
        n_new = int(round(steps[worst] / step)) - 1
        if options.on_gap == "interpolate" and n_new > options.max_interpolated_slices:
            raise DicomSeriesError(
                f"DICOM series {label} has a gap of {steps[worst]:g} mm between '{slices[worst].path.name}' and "
                f"'{slices[worst + 1].path}' where slices step {step:g} mm; filling it would invent {n_new} slices "
                f"(more than max_interpolated_slices={options.max_interpolated_slices}).",
                hint="this is not one contiguous scan: add the missing files, or select the slices of one block.",
                path=str(slices[worst + 1].path))
        if options.on_gap == "error":
            raise DicomSeriesError(
                f"DICOM series {label} has {what}: slices step {step:g} mm along the normal, but {steps[i]:g} mm "
                f"between '{slices[i].path.name}' and '{slices[i + 1].path}' ({bad.size} irregular step(s) in "
                f"{len(slices)} files).",
                hint="add the missing files, or pass on_gap='interpolate' (CLI: --on-gap interpolate) to resample "
                     "linearly onto a uniform grid.", path=str(slices[i + 1].path))
        n_out = int(round((d[-1] - d[0]) / step)) + 1
        targets = d[0] + step * np.arange(n_out)
        repairs.append(f"irregular slice steps ({what}, {bad.size} step(s) off the {step:g} mm step): "
                       f"{len(slices)} slices linearly interpolated onto {n_out} slices at {step:g} mm.")
        sk = step
    else:
        sk = float((d[-1] - d[0]) / (len(d) - 1))
    direction = np.column_stack([row, col, normal])
    return SeriesPlan(slices, d, (sx, sy, sk), tuple(float(v) for v in origin), direction, shifts=shifts, pad=pad,
                      targets=targets, repairs=repairs, warnings=warnings)


MAX_PIXEL_SPACING_MM = 1000.0  # a pixel wider than a metre means a corrupt header


def _check_files(slices: list[SliceHeader], label: str, options: DicomReadOptions) -> SliceHeader:
    """Check every file; returns the reference header (the most common size/orientation/spacing)."""
    def fail(msg: str, hdr: SliceHeader, hint: str) -> None:
        raise DicomSeriesError(f"DICOM series {label}: {msg} (file '{hdr.path}').", hint=hint, path=str(hdr.path))

    def key(h: SliceHeader) -> tuple:
        return (h.rows, h.columns, tuple(np.round(h.orientation or (), 3)), tuple(np.round(h.pixel_spacing or (), 4)))

    counts: dict[tuple, int] = {}
    for hdr in slices:
        counts[key(hdr)] = counts.get(key(hdr), 0) + 1
    first = next(h for h in slices if counts[key(h)] == max(counts.values()))
    for hdr in slices:
        if hdr.enhanced:
            fail(f"{hdr.enhanced} file with {hdr.frames} frame(s) in one file; medeff reads classic single-frame "
                 "series only", hdr, "convert it to single-frame files first (e.g. dcm2niix or pydicom's/highdicom's "
                 "legacy conversion), then read the converted folder.")
        if hdr.samples != 1:
            fail(f"{hdr.samples} samples per pixel ({hdr.photometric}); only greyscale images form a volume", hdr,
                 "select a greyscale series (--series-uid / --description).")
        _check_pixel_layout(hdr, fail)
        missing = [name for name, value in (("ImagePositionPatient", hdr.position),
                                            ("ImageOrientationPatient", hdr.orientation),
                                            ("PixelSpacing", hdr.pixel_spacing)) if value is None]
        if missing:
            fail(f"missing or invalid geometry tag(s) {', '.join(missing)}; the voxel positions are unknown", hdr,
                 "export the series again with full image-plane tags, or convert it with a tool that lets you "
                 "state the geometry yourself.")
        if (hdr.rows, hdr.columns) != (first.rows, first.columns):
            fail(f"image size {hdr.rows}x{hdr.columns} differs from {first.rows}x{first.columns} in "
                 f"'{first.path.name}'", hdr, "the folder mixes scans; select one series or separate the files.")
        layout = (hdr.bits_allocated, hdr.bits_stored, hdr.signed)
        if layout != (first.bits_allocated, first.bits_stored, first.signed):
            fail(f"pixel layout (BitsAllocated, BitsStored, signed) {layout} differs from "
                 f"{(first.bits_allocated, first.bits_stored, first.signed)} in '{first.path.name}'", hdr,
                 "the folder mixes scans or a header is corrupt; select one series or remove the odd file.")
        if not np.allclose(hdr.orientation, first.orientation, atol=options.orientation_tolerance):
            fail(f"ImageOrientationPatient differs from '{first.path.name}' (mixed orientations, e.g. a localizer "
                 "in the series)", hdr, "remove the files with the other orientation or select another series.")
        if not np.allclose(hdr.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-5):
            fail(f"PixelSpacing {hdr.pixel_spacing} differs from {first.pixel_spacing} in '{first.path.name}'", hdr,
                 "the folder mixes reconstructions; select one series.")
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    tol = options.orientation_tolerance
    if abs(np.linalg.norm(row) - 1) > tol or abs(np.linalg.norm(col) - 1) > tol or abs(row @ col) > tol:
        fail(f"ImageOrientationPatient {first.orientation} is not two orthogonal unit vectors", first,
             "the header is corrupt; re-export the series.")
    if any(v <= 0 for v in first.pixel_spacing):
        fail(f"PixelSpacing {first.pixel_spacing} is not positive", first, "the header is corrupt; re-export it.")
    if any(v > MAX_PIXEL_SPACING_MM for v in first.pixel_spacing):
        fail(f"PixelSpacing {first.pixel_spacing} exceeds {MAX_PIXEL_SPACING_MM:g} mm, which no scanner produces",
             first, "the header is corrupt; re-export it.")
    return first


def _check_pixel_layout(hdr: SliceHeader, fail) -> None:
    """Image size, bit depth and rescale must be usable, and native pixel data must have the size they imply."""
    if hdr.rows <= 0 or hdr.columns <= 0:
        fail(f"image size Rows={hdr.rows} x Columns={hdr.columns} is empty or missing", hdr,
             "the header is corrupt; re-export the series or remove this file.")
    if hdr.bits_allocated not in (8, 16, 32) or not 0 < hdr.bits_stored <= hdr.bits_allocated:
        fail(f"BitsAllocated={hdr.bits_allocated} / BitsStored={hdr.bits_stored} is not a supported greyscale "
             "layout (8, 16 or 32 bits allocated, no more bits stored than allocated)", hdr,
             "the header is corrupt; re-export the series or remove this file.")
    if hdr.pixel_length is not None:
        expected = hdr.rows * hdr.columns * hdr.bits_allocated // 8 * max(hdr.frames, 1)
        if hdr.pixel_length not in (expected, expected + 1):  # +1: odd lengths are padded to even
            fail(f"pixel data holds {hdr.pixel_length} bytes but Rows x Columns x BitsAllocated imply {expected}",
                 hdr, "the header or the pixel data is corrupt; copy the file again or remove it.")
    for name, value in (("RescaleSlope", hdr.slope), ("RescaleIntercept", hdr.intercept)):
        if not np.isfinite(value):
            fail(f"{name} is not a finite number", hdr,
                 "fix the header (CT needs a numeric RescaleSlope/RescaleIntercept) or remove this file.")
    if hdr.slope == 0:
        fail("RescaleSlope is 0 (every voxel would get the same value)", hdr,
             "fix the header (RescaleSlope is usually 1 for CT) or remove this file.")


def _check_line(slices, along_row, along_col, d, label, options) -> None:
    """Slice origins must lie on a straight line: in-plane offsets linear in the normal position."""
    if len(slices) < 3:
        return
    t = d - d[0]
    worst, where = 0.0, 0
    for offsets in (along_row, along_col):
        slope, icept = np.polyfit(t, offsets, 1)
        resid = np.abs(offsets - (slope * t + icept))
        if resid.max() > worst:
            worst, where = float(resid.max()), int(np.argmax(resid))
    if worst > options.inplane_tolerance_mm:
        raise DicomSeriesError(
            f"DICOM series {label}: slice origins do not line up; file '{slices[where].path}' lies {worst:.2f} mm "
            "in-plane off the line through the other slices (shifted field of view or several stacks in one series).",
            hint="split the stacks into separate folders or remove the shifted files; raise "
                 "io.dicom.inplane_tolerance_mm only if the shift is rounding noise.",
            path=str(slices[where].path))


def _drop_duplicates(slices, pos, d, label, options, pixels_equal, repairs):
    keep = [0]
    dropped = 0
    for i in range(1, len(slices)):
        prev = keep[-1]
        if abs(d[i] - d[prev]) > options.spacing_atol_mm:
            keep.append(i)
            continue
        same = options.on_duplicate == "drop_identical" and pixels_equal(slices[prev], slices[i])
        if not same:
            detail = ("their pixel data differ" if options.on_duplicate == "drop_identical"
                      else "on_duplicate is 'error'")
            raise DicomSeriesError(
                f"DICOM series {label}: files '{slices[prev].path.name}' and '{slices[i].path}' lie at the same slice "
                f"position ({d[i]:.3f} mm along the normal) and {detail}; this is not a single volume.",
                hint="the folder likely holds several acquisitions or time points with one series UID; split them "
                     "into separate folders (or remove the extra files), then read each one.",
                path=str(slices[i].path))
        dropped += 1
    if dropped:
        repairs.append(f"{dropped} exact duplicate slice(s) (same position, identical pixels) dropped.")
        slices, pos, d = [slices[i] for i in keep], pos[keep], d[keep]
    return slices, pos, d


def _tilt_grid(in_plane, first, p0, row, col, sx, sy):
    """Output grid covering every shifted slice, aligned with the pixels of the first slice."""
    lo = np.floor(np.minimum(in_plane.min(axis=0), 0.0)).astype(int)  # (columns, rows)
    hi = np.ceil(np.maximum(in_plane.max(axis=0), 0.0)).astype(int)
    n_cols = first.columns + int(hi[0] - lo[0])
    n_rows = first.rows + int(hi[1] - lo[1])
    # output index (r, c) of slice k reads input (r + lo_r - v_k, c + lo_c - u_k)
    shifts = np.column_stack([lo[1] - in_plane[:, 1], lo[0] - in_plane[:, 0]])
    origin = p0 + lo[0] * sx * row + lo[1] * sy * col
    return shifts, (int(-lo[1]), int(-lo[0]), n_rows, n_cols), origin
