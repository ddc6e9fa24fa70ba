"""Read one DICOM series into an :class:`ImageData` volume in Hounsfield units (or the modality's units).

Headers are read once (:mod:`medeff.io.dicom_scan`), the series is validated and planned
(:mod:`medeff.io.dicom_geometry`), then pixels are copied straight from the files into one preallocated
array (uncompressed transfer syntaxes) or decoded by SimpleITK/GDCM (compressed ones), and
RescaleSlope/RescaleIntercept are applied in place. Output types follow GDCM's rule, so the result
equals SimpleITK's ``ImageSeriesReader`` voxel for voxel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medeff.errors import DicomSeriesError, ImageReadError
from medeff.io.base import ImageData, require_finite
from medeff.io.dicom_geometry import SeriesPlan, plan_series
from medeff.io.dicom_scan import DicomSeriesInfo, SliceHeader, find_series
from medeff.io.options import DicomReadOptions
from medeff.utils.logging import get_logger
from medeff.utils.progress import track

__all__ = ["read_dicom_series", "find_series", "select_series", "DicomSeriesInfo", "DicomReadOptions"]

log = get_logger(__name__)


def read_dicom_series(
    folder: str | os.PathLike,
    *,
    series_uid: str | None = None,
    description: str | None = None,
    options: DicomReadOptions | None = None,
) -> ImageData:
    """Read one DICOM series from ``folder`` (searched recursively) as a validated 3D volume.

    Args:
        folder: folder holding the series' files (other series and non-DICOM files may sit beside them).
        series_uid: pick the series with this SeriesInstanceUID (a unique prefix or suffix also works).
        description: pick the largest series whose SeriesDescription equals this (case-insensitive).
        options: validation tolerances and repair policy; defaults from ``conf/io/dicom.yaml``.

    Returns:
        :class:`ImageData` with ``array[i, j, k]`` (k ascending along the slice normal), LPS geometry and
        ``meta`` holding format, modality, series/study UID, description, repairs and warnings (no patient data).

    Raises:
        ImageReadError: the folder does not exist or holds no DICOM.
        DicomSeriesError: no series matches, or the chosen series cannot form a volume under ``options``.
    """
    options = options or DicomReadOptions.from_config()
    series = find_series(folder)
    if not series:
        raise ImageReadError(
            f"No DICOM image file found in '{folder}'.",
            hint="point to the folder that holds the .dcm files of one scan (files need the 128-byte preamble and "
                 "'DICM' marker).", path=str(folder))
    info = select_series(series, series_uid=series_uid, description=description, folder=folder)
    return read_series_info(info, options)


def select_series(
    series: list[DicomSeriesInfo],
    *,
    series_uid: str | None = None,
    description: str | None = None,
    folder: str | os.PathLike = "",
) -> DicomSeriesInfo:
    """Choose one series: by UID, by description, or else the largest axial CT series.

    Without UID or description the rule is: the largest axial CT series; if there is none, the largest CT
    series; if there is no CT, the largest series (ties: folder name, then UID).

    Raises:
        DicomSeriesError: no series matches ``series_uid`` / ``description`` (the message lists the choices).
    """
    def listing() -> str:
        return "; ".join(f"{s.label}: {s.modality or '?'} {s.orientation}, {s.n_files} files, "
                         f"description '{s.description}'" for s in series)

    if series_uid:
        hits = [s for s in series if s.series_uid == series_uid]
        hits = hits or [s for s in series if s.series_uid.endswith(series_uid) or s.series_uid.startswith(series_uid)]
        if len(hits) != 1:
            raise DicomSeriesError(
                f"{'No' if not hits else 'More than one'} DICOM series in '{folder}' matches UID '{series_uid}'. "
                f"Found: {listing()}.", hint="pass the full SeriesInstanceUID of one of the series listed.",
                path=str(folder))
        return hits[0]
    if description:
        hits = [s for s in series if s.description.strip().lower() == description.strip().lower()]
        if not hits:
            raise DicomSeriesError(
                f"No DICOM series in '{folder}' has the description '{description}'. Found: {listing()}.",
                hint="pass one of the descriptions listed, or select by --series-uid.", path=str(folder))
        return hits[0]
    for keep in (lambda s: s.modality == "CT" and s.orientation == "axial", lambda s: s.modality == "CT",
                 lambda s: True):
        hits = [s for s in series if keep(s)]
        if hits:
            chosen = hits[0]
            if len(series) > 1:
                log.info("%d DICOM series in '%s'; reading %s (%s, %d files). Choose another with series_uid or "
                         "description.", len(series), Path(folder).name, chosen.label, chosen.modality or "?",
                         chosen.n_files)
            return chosen
    raise AssertionError("unreachable: find_series never returns an empty list")


def read_series_info(info: DicomSeriesInfo, options: DicomReadOptions | None = None) -> ImageData:
    """Read the series described by ``info`` (from :func:`find_series`) under ``options``."""
    options = options or DicomReadOptions.from_config()
    plan = plan_series(list(info.slices), info.label, options, _pixels_equal)
    volume = _read_pixels(plan.slices, info.label, plan.warnings)  # (k, rows, columns)
    # stored pixels are integers; a float RescaleSlope/Intercept can still overflow float32 (checked before any
    # resampling repair, which would clip)
    require_finite(volume, info.folder, name=f"DICOM series {info.label}", hint="check RescaleSlope/RescaleIntercept "
                   "of the series (CT uses a slope near 1); re-export the series if they are corrupt.")
    if plan.shifts is not None:
        volume = _apply_tilt(volume, plan, options.fill_value)
    if plan.targets is not None:
        volume = _interpolate_slices(volume, plan.normal_positions, plan.targets)
    for text in plan.repairs:
        log.warning("DICOM series %s repaired: %s", info.label, text)
    for text in plan.warnings:
        log.warning("DICOM series %s: %s", info.label, text)
    first = plan.slices[0]
    n_warn = len(plan.warnings)
    if not info.modality:
        plan.warnings.append("Modality tag missing; values are rescaled stored values (HU if this is CT).")
    if first.photometric == "MONOCHROME1":
        plan.warnings.append("MONOCHROME1 (low values display bright); values are rescaled, not inverted.")
    if any((s.slope, s.intercept) != (first.slope, first.intercept) for s in plan.slices):
        plan.warnings.append("RescaleSlope/RescaleIntercept differ between slices; applied per slice (float32).")
    n_missing = sum(s.rescale_missing for s in plan.slices)
    if n_missing:
        plan.warnings.append(f"RescaleSlope/RescaleIntercept missing in {n_missing} of {len(plan.slices)} file(s); "
                             "slope 1 and intercept 0 assumed (stored values, not HU, if this is CT).")
    if info.skipped:
        names = ", ".join(p.name for p in info.skipped[:5]) + (" ..." if len(info.skipped) > 5 else "")
        plan.warnings.append(f"{len(info.skipped)} unreadable DICOM-like file(s) skipped beside the series ({names}); "
                             "the volume may lack slices.")
    for text in plan.warnings[n_warn:]:
        log.warning("DICOM series %s: %s", info.label, text)
    meta = {
        "format": "dicom",
        "source": str(info.folder),
        "modality": info.modality,
        "series_uid": info.series_uid,
        "study_uid": info.study_uid,
        "series_description": info.description,
        "n_files": info.n_files,
        "photometric": first.photometric,
        "rescale": {"slope": first.slope, "intercept": first.intercept},
        "repairs": list(plan.repairs),
        "warnings": list(plan.warnings),
    }
    return ImageData(array=volume.transpose(2, 1, 0), spacing=plan.spacing, origin=plan.origin,
                     direction=plan.direction, meta=meta)


def _pixels_equal(a: SliceHeader, b: SliceHeader) -> bool:
    return _raw_bytes(a) == _raw_bytes(b)


def _raw_bytes(hdr: SliceHeader) -> bytes:
    if hdr.pixel_offset is not None:
        with open(hdr.path, "rb") as fh:
            fh.seek(hdr.pixel_offset)
            return fh.read(hdr.pixel_length)
    import pydicom

    try:
        return bytes(pydicom.dcmread(hdr.path).PixelData)
    except Exception as exc:  # noqa: BLE001 - any pydicom failure on a damaged file
        raise DicomSeriesError(f"DICOM file '{hdr.path}' cannot be read ({type(exc).__name__}).",
                               hint="copy the file again from the source or remove it.", path=str(hdr.path)) from exc


def _output_dtype(hdr: SliceHeader) -> np.dtype:
    """Pixel type after rescaling, chosen like GDCM: smallest integer type holding the range, else float."""
    stored = np.dtype(f"<{'i' if hdr.signed else 'u'}{hdr.bits_allocated // 8}")
    slope, inter = hdr.slope, hdr.intercept
    if slope == 1 and inter == 0:
        return stored
    if float(slope).is_integer() and float(inter).is_integer():
        bits = hdr.bits_stored
        lo, hi = ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if hdr.signed else (0, 2 ** bits - 1))
        lo, hi = sorted((slope * lo + inter, slope * hi + inter))
        kinds = ("uint8", "uint16", "uint32") if lo >= 0 else ("int8", "int16", "int32")
        for kind in kinds:
            info = np.iinfo(kind)
            if info.min <= lo and hi <= info.max:
                return np.dtype(kind)
    return np.dtype(np.float32)


def _read_pixels(slices: list[SliceHeader], label: str, notes: list[str] | None = None) -> np.ndarray:
    first = slices[0]
    nbytes = first.rows * first.columns * first.bits_allocated // 8
    native = first.bits_allocated in (8, 16, 32) and all(
        s.pixel_offset is not None and s.pixel_length is not None and s.pixel_length >= nbytes
        and (s.bits_allocated, s.bits_stored, s.signed) == (first.bits_allocated, first.bits_stored, first.signed)
        for s in slices)
    if not native:
        return _read_pixels_sitk(slices, label)
    stored = np.dtype(f"<{'i' if first.signed else 'u'}{first.bits_allocated // 8}")
    vol = np.empty((len(slices), first.rows, first.columns), dtype=stored)
    for k, hdr in enumerate(track(slices, "Reading DICOM slices", transient=True)):
        with open(hdr.path, "rb") as fh:
            fh.seek(hdr.pixel_offset)
            got = fh.readinto(memoryview(vol[k]).cast("B"))
        if got != nbytes:
            raise DicomSeriesError(f"DICOM series {label}: file '{hdr.path}' is truncated ({got} of {nbytes} pixel "
                                   "bytes).", hint="copy the file again from the source.", path=str(hdr.path))
    if first.bits_stored < first.bits_allocated:
        shift = first.bits_allocated - first.bits_stored
        before = vol.copy() if notes is not None else None
        if first.signed:
            vol <<= shift
            vol >>= shift
        else:
            vol &= np.array((1 << first.bits_stored) - 1, dtype=stored)
        if before is not None and not np.array_equal(before, vol):
            notes.append(f"pixel values use more than BitsStored={first.bits_stored} bits; the extra high bits were "
                         "masked off as the header says (check BitsStored if the image looks wrong).")
    return _rescale(vol, slices)


def _rescale(vol: np.ndarray, slices: list[SliceHeader]) -> np.ndarray:
    first = slices[0]
    if any((s.slope, s.intercept) != (first.slope, first.intercept) for s in slices):
        out = vol.astype(np.float32)
        with np.errstate(over="ignore"):  # an overflow to inf is refused by the caller
            for k, s in enumerate(slices):
                out[k] *= np.float32(s.slope)
                out[k] += np.float32(s.intercept)
        return out
    dtype = _output_dtype(first)
    if dtype == vol.dtype and first.slope == 1 and first.intercept == 0:
        return vol
    if dtype.kind in "iu":
        # same width: reinterpret in place; integer arithmetic is modular and the result range fits ``dtype``
        out = vol.view(dtype) if dtype.itemsize == vol.dtype.itemsize else vol.astype(dtype)
        if first.slope != 1:
            out *= dtype.type(first.slope)
        if first.intercept != 0:
            out += dtype.type(first.intercept)
        return out
    out = vol.astype(np.float32)
    with np.errstate(over="ignore"):  # an overflow to inf is refused by the caller, naming the series
        out *= np.float32(first.slope)
        out += np.float32(first.intercept)
    return out


def _read_pixels_sitk(slices: list[SliceHeader], label: str) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(s.path) for s in slices])
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # spacing warnings: our own checks already ran
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise DicomSeriesError(f"DICOM series {label}: pixel data could not be decoded ({str(exc).splitlines()[-1]}).",
                               hint="check that the files are complete; for an unusual compression, decompress "
                                    "them first (e.g. gdcmconv --raw).", path=str(slices[0].path)) from exc
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DicomSeriesError(f"DICOM series {label} decodes to colour pixels; only greyscale volumes are read.",
                               hint="select a greyscale series.", path=str(slices[0].path))
    return sitk.GetArrayFromImage(image)


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        np.rint(values, out=values)
        np.clip(values, info.min, info.max, out=values)
    return values.astype(dtype, copy=False)


def _apply_tilt(volume: np.ndarray, plan: SeriesPlan, fill: float) -> np.ndarray:
    from scipy import ndimage

    _, _, n_rows, n_cols = plan.pad
    out = np.empty((volume.shape[0], n_rows, n_cols), dtype=np.float32)
    for k in range(volume.shape[0]):
        ndimage.affine_transform(volume[k].astype(np.float32), np.eye(2), offset=plan.shifts[k],
                                 output_shape=(n_rows, n_cols), output=out[k], order=1, mode="constant", cval=fill)
    return _cast_like(out, volume.dtype)


def _interpolate_slices(volume: np.ndarray, positions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    out = np.empty((len(targets),) + volume.shape[1:], dtype=np.float32)
    hi = np.clip(np.searchsorted(positions, targets, side="left"), 1, len(positions) - 1)
    lo = hi - 1
    for m, (a, b) in enumerate(zip(lo, hi, strict=True)):
        span = positions[b] - positions[a]
        w = float(np.clip((targets[m] - positions[a]) / span, 0.0, 1.0))
        np.multiply(volume[a], np.float32(1.0 - w), out=out[m], casting="unsafe")
        out[m] += np.float32(w) * volume[b]
    return _cast_like(out, volume.dtype)
