"""Fast DICOM header scan: find the series in a folder without decoding any pixels.

Only the tags needed for grouping, geometry and pixel layout are parsed (pydicom ``specific_tags``,
stopping before the pixel data). For uncompressed files the byte offset of the pixel data is noted
while the file is open, so the reader can later copy the pixels straight into the volume.
Files that are not DICOM (LIDC's ``.xml`` annotations, READMEs) are skipped silently.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medeff.io.dicom_parse import FastHeader, read_tags
from medeff.utils.logging import get_logger
from medeff.utils.progress import track

__all__ = ["DicomSeriesInfo", "SliceHeader", "find_series", "scan_files", "series_label"]

log = get_logger(__name__)

_TAGS = [
    "SOPClassUID", "Modality", "SeriesInstanceUID", "StudyInstanceUID", "SeriesDescription", "PatientID",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
    "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "InstanceNumber",
]
_FAST = {
    "SOPClassUID": 0x00080016, "Modality": 0x00080060, "SeriesInstanceUID": 0x0020000E,
    "StudyInstanceUID": 0x0020000D, "SeriesDescription": 0x0008103E, "PatientID": 0x00100020,
    "ImagePositionPatient": 0x00200032, "ImageOrientationPatient": 0x00200037, "PixelSpacing": 0x00280030,
    "SliceThickness": 0x00180050, "Rows": 0x00280010, "Columns": 0x00280011, "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101, "PixelRepresentation": 0x00280103, "SamplesPerPixel": 0x00280002,
    "PhotometricInterpretation": 0x00280004, "NumberOfFrames": 0x00280008, "RescaleSlope": 0x00281053,
    "RescaleIntercept": 0x00281052, "InstanceNumber": 0x00200013,
}
_WANTED = frozenset(_FAST.values())
_UNCOMPRESSED = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # syntax -> implicit VR
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
_ENHANCED_SOP = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET",
}


@dataclass
class SliceHeader:
    """Geometry and pixel layout of one DICOM file (no identifiers)."""

    path: Path
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    samples: int
    photometric: str
    frames: int
    slope: float
    intercept: float
    slice_thickness: float | None
    sop_class: str
    pixel_offset: int | None = None  # byte offset of raw pixel values (uncompressed files only)
    pixel_length: int | None = None
    rescale_missing: bool = False  # RescaleSlope or RescaleIntercept absent (1 / 0 assumed; noted by the reader)

    @property
    def enhanced(self) -> str | None:
        """Name of the multi-frame (enhanced) IOD, or None for a classic single-frame image."""
        if self.sop_class in _ENHANCED_SOP:
            return _ENHANCED_SOP[self.sop_class]
        return "multi-frame" if self.frames > 1 else None


@dataclass
class DicomSeriesInfo:
    """One DICOM series found on disk.

    Attributes:
        series_uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        modality: Modality ("CT", "MR", ...; "" when the tag is absent).
        description: SeriesDescription ("" when absent).
        files: the series' files, sorted by name (reading sorts them by position).
        n_files: number of files.
        rows, columns: image size of the first file.
        orientation: "axial", "coronal", "sagittal", "oblique" or "unknown" (from ImageOrientationPatient).
        folder: the folder holding the first file.
        patient_key: raw PatientID, only for grouping series in memory. Never print, log or store it.
        slices: per-file geometry and pixel layout (no identifiers), used by the reader.
        skipped: files beside the series that look like DICOM (marker or ``.dcm`` suffix) but cannot be parsed.
    """

    series_uid: str
    study_uid: str
    modality: str
    description: str
    files: list[Path]
    n_files: int
    rows: int
    columns: int
    orientation: str
    folder: Path
    patient_key: str = field(default="", repr=False, compare=False)
    slices: list[SliceHeader] = field(default_factory=list, repr=False, compare=False)
    skipped: list[Path] = field(default_factory=list, repr=False, compare=False)

    @property
    def label(self) -> str:
        """Non-identifying name for messages: folder name plus the last digits of the series UID."""
        return series_label(self.folder, self.series_uid)


def series_label(folder: Path, series_uid: str) -> str:
    """``"<folder>/...<last 8 UID characters>"``: names a series without patient identifiers."""
    return f"'{Path(folder).name}' (series ...{series_uid[-8:]})" if series_uid else f"'{Path(folder).name}'"


def find_series(folder: str | os.PathLike) -> list[DicomSeriesInfo]:
    """Scan ``folder`` recursively and group its DICOM files by SeriesInstanceUID.

    Args:
        folder: a folder (searched recursively) or a single DICOM file.

    Returns:
        One :class:`DicomSeriesInfo` per series, largest first (ties by folder and UID); empty when the folder
        holds no DICOM image file.

    Raises:
        ImageReadError: ``folder`` does not exist.
    """
    from medeff.errors import ImageReadError

    folder = Path(folder)
    if not folder.exists():
        raise ImageReadError(f"DICOM folder '{folder}' does not exist.", hint="check the path.", path=str(folder))
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    skipped: list[Path] = []
    headers = scan_files(files, skipped=skipped)
    groups: dict[str, list[tuple[SliceHeader, dict]]] = {}
    for hdr, ids in headers:
        groups.setdefault(ids["series_uid"], []).append((hdr, ids))
    out = []
    for uid, members in groups.items():
        members.sort(key=lambda m: str(m[0].path))
        first, ids = members[0]
        out.append(DicomSeriesInfo(
            series_uid=uid, study_uid=ids["study_uid"], modality=ids["modality"], description=ids["description"],
            files=[m[0].path for m in members], n_files=len(members), rows=first.rows, columns=first.columns,
            orientation=_orientation_name(first.orientation), folder=first.path.parent,
            patient_key=ids["patient_key"], slices=[m[0] for m in members],
            skipped=[p for p in skipped if p.parent == first.path.parent],
        ))
    out.sort(key=lambda s: (-s.n_files, str(s.folder), s.series_uid))
    return out


def scan_files(files: Iterable[Path], *, skipped: list[Path] | None = None) -> list[tuple[SliceHeader, dict]]:
    """Read the headers of ``files``; non-DICOM files are skipped. Returns (header, grouping ids) pairs.

    The fast tag walker (:mod:`medeff.io.dicom_parse`) handles little endian Part 10 files; anything else goes
    through pydicom.

    Args:
        files: the files to scan.
        skipped: when given, receives the files that look like DICOM (``DICM`` marker or a ``.dcm``/``.ima``
            suffix) but cannot be parsed (truncated, zero-byte, garbage): the reader reports them.
    """
    out = []
    for path in track(files, "Reading DICOM headers", transient=True):
        path = Path(path)
        fast = read_tags(path, _WANTED)
        if fast is not None and fast.truncated:
            if skipped is not None:
                skipped.append(path)  # cut before its pixel data: unusable, and its tags may be cut short
            continue
        if fast is not None and (_FAST["SeriesInstanceUID"] in fast.values or _FAST["Rows"] in fast.values):
            out.append((_fast_slice_header(path, fast), _fast_ids(fast)))
            continue
        # DICOMDIR, structured reports and other non-image objects have neither tag; so has a stream the fast
        # walker misread (e.g. a transfer syntax that does not match the encoding): pydicom decides
        item = _scan_with_pydicom(path, skipped)
        if item is not None:
            out.append(item)
    return out


def _scan_with_pydicom(path: Path, skipped: list[Path] | None = None) -> tuple[SliceHeader, dict] | None:
    import pydicom

    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on odd files; they are skipped or checked below
            if not _has_preamble(fh):
                if skipped is not None and path.suffix.lower() in (".dcm", ".dicom", ".ima"):
                    skipped.append(path)  # a DICOM name without a DICOM body (zero-byte, cut copy)
                return None
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=_TAGS)
            offset, length = _pixel_location(fh, ds)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files; any of them means skip
        log.debug("skipping %s: not readable as DICOM (%s)", path.name, type(exc).__name__)
        if skipped is not None:
            skipped.append(path)
        return None
    if "SeriesInstanceUID" not in ds and "Rows" not in ds:
        if skipped is not None and str(ds.get("SOPClassUID", "")) != _DICOMDIR_SOP:
            skipped.append(path)  # an image object cut short before its series and size tags
        return None
    return _slice_header(path, ds, offset, length), _ids(ds)


def _fast_slice_header(path: Path, h: FastHeader) -> SliceHeader:
    def floats(name: str, n: int) -> tuple[float, ...] | None:
        vals = h.numbers(_FAST[name])
        return tuple(vals) if vals is not None and len(vals) == n and all(np.isfinite(vals)) else None

    def number(name: str, default, cast=float):
        vals = h.numbers(_FAST[name])
        return cast(vals[0]) if vals else default

    def rescale(name: str, default: float) -> float:
        text = h.text(_FAST[name])
        if text is None:
            return default
        vals = h.numbers(_FAST[name])
        return float(vals[0]) if vals and len(vals) == 1 else float("nan")  # present but unusable: refused later

    def ushort(name: str, default: int) -> int:
        value = h.ushort(_FAST[name])
        return default if value is None else value

    bits_allocated = ushort("BitsAllocated", 16)
    return SliceHeader(
        path=path, position=floats("ImagePositionPatient", 3), orientation=floats("ImageOrientationPatient", 6),
        pixel_spacing=floats("PixelSpacing", 2), rows=ushort("Rows", 0), columns=ushort("Columns", 0),
        bits_allocated=bits_allocated, bits_stored=ushort("BitsStored", bits_allocated),
        signed=bool(ushort("PixelRepresentation", 0)), samples=ushort("SamplesPerPixel", 1),
        photometric=h.text(_FAST["PhotometricInterpretation"]) or "MONOCHROME2",
        frames=number("NumberOfFrames", 1, int), slope=rescale("RescaleSlope", 1.0),
        intercept=rescale("RescaleIntercept", 0.0), slice_thickness=number("SliceThickness", None),
        sop_class=h.text(_FAST["SOPClassUID"]) or "", pixel_offset=h.pixel_offset, pixel_length=h.pixel_length,
        rescale_missing=_FAST["RescaleSlope"] not in h.values or _FAST["RescaleIntercept"] not in h.values,
    )


def _fast_ids(h: FastHeader) -> dict:
    return {
        "series_uid": h.text(_FAST["SeriesInstanceUID"]) or "",
        "study_uid": h.text(_FAST["StudyInstanceUID"]) or "",
        "modality": h.text(_FAST["Modality"]) or "",
        "description": h.text(_FAST["SeriesDescription"]) or "",
        "patient_key": h.text(_FAST["PatientID"]) or "",
    }


def _has_preamble(fh) -> bool:
    """Part 10 files start with a 128-byte preamble and "DICM"; files without it are not read."""
    head = fh.read(132)
    fh.seek(0)
    return len(head) == 132 and head[128:132] == b"DICM"


def _pixel_location(fh, ds) -> tuple[int | None, int | None]:
    """Byte offset and length of native (uncompressed, little endian) pixel data, else (None, None)."""
    syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    if syntax not in _UNCOMPRESSED:
        return None, None
    pos = fh.tell()
    head = fh.read(12)
    if len(head) < 8 or struct.unpack("<HH", head[:4]) != (0x7FE0, 0x0010):
        return None, None
    if _UNCOMPRESSED[syntax]:
        length, start = struct.unpack("<I", head[4:8])[0], pos + 8
    elif head[4:6] in (b"OB", b"OW", b"UN", b"OV"):
        length, start = struct.unpack("<I", head[8:12])[0], pos + 12
    else:
        length, start = struct.unpack("<H", head[6:8])[0], pos + 8
    if length == 0xFFFFFFFF:
        return None, None
    return start, length


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n and all(np.isfinite(vals)) else None


def _slice_header(path: Path, ds, offset: int | None, length: int | None) -> SliceHeader:
    def num(name, default, cast=float):
        value = ds.get(name, None)
        try:
            return cast(value) if value not in (None, "") else default
        except (TypeError, ValueError):
            return default

    def rescale(name: str, default: float) -> float:
        if name not in ds:
            return default
        try:
            value = ds[name].value
            if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str):
                return float("nan")  # several values: unusable, refused later
            return float(value)
        except (TypeError, ValueError, OverflowError):
            return float("nan")

    return SliceHeader(
        path=path,
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        rows=num("Rows", 0, int), columns=num("Columns", 0, int),
        bits_allocated=num("BitsAllocated", 16, int), bits_stored=num("BitsStored", num("BitsAllocated", 16, int), int),
        signed=bool(num("PixelRepresentation", 0, int)), samples=num("SamplesPerPixel", 1, int),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2"),
        frames=num("NumberOfFrames", 1, int), slope=rescale("RescaleSlope", 1.0),
        intercept=rescale("RescaleIntercept", 0.0),
        slice_thickness=num("SliceThickness", None), sop_class=str(ds.get("SOPClassUID", "") or ""),
        pixel_offset=offset, pixel_length=length,
        rescale_missing="RescaleSlope" not in ds or "RescaleIntercept" not in ds,
    )


def _ids(ds) -> dict:
    return {
        "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "modality": str(ds.get("Modality", "") or ""),
        "description": str(ds.get("SeriesDescription", "") or ""),
        "patient_key": str(ds.get("PatientID", "") or ""),
    }


def _orientation_name(iop: tuple[float, ...] | None) -> str:
    if iop is None:
        return "unknown"
    normal = np.cross(iop[:3], iop[3:])
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]
