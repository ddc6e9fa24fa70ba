"""Write an :class:`ImageData` volume as a synthetic single-frame CT DICOM series (for demo data and tests).

The series carries real geometry (ImagePositionPatient per slice, ImageOrientationPatient, PixelSpacing) and
RescaleSlope/Intercept, and only *synthetic* identifying values: by default every identifying tag is a fixed
phantom value; tests pass deliberately identifying values to check that nothing downstream leaks them.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from medeff.io.base import ImageData

__all__ = ["write_ct_series"]

_DEFAULT_IDENTITY = {
    "PatientName": "PHANTOM^DEMO",
    "PatientID": "PHANTOM-0001",
    "PatientBirthDate": "19000101",
    "AccessionNumber": "ACC0000",
    "InstitutionName": "medeff phantom lab",
}


def write_ct_series(
    image: ImageData,
    folder: str | Path,
    *,
    identity: dict[str, str] | None = None,
    series_description: str = "phantom CT",
    rescale: tuple[float, float] = (1.0, -1024.0),
    file_names: str = "slice_{k:04d}.dcm",
    uid_root: str = "1.2.826.0.1.3680043.8.498.",
    seed: int = 0,
) -> list[Path]:
    """Write ``image`` (HU, indexed ``[i, j, k]``) as one DICOM file per ``k`` slice.

    Args:
        image: 3D volume with geometry; slices are written along index axis k.
        folder: output folder (created).
        identity: values for PatientName, PatientID, PatientBirthDate, AccessionNumber, InstitutionName, ...
        series_description: SeriesDescription.
        rescale: ``(slope, intercept)``; stored values are ``(HU - intercept) / slope`` as uint16/int16.
        file_names: format string for the file names (``k`` is the slice index).
        uid_root: UID prefix for generated UIDs.
        seed: makes the generated UIDs reproducible.

    Returns:
        The written file paths in slice order.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if image.ndim != 3:
        raise ValueError(f"write_ct_series needs a 3D image, got {image.ndim} spatial axes.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ident = dict(_DEFAULT_IDENTITY, **(identity or {}))
    slope, intercept = rescale
    stored = np.round((image.array.astype(np.float64) - intercept) / slope)
    signed = stored.min() < 0
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError("values do not fit 16-bit storage with this rescale; choose another slope/intercept.")
    stored = stored.astype(dtype)
    study_uid = generate_uid(uid_root, entropy_srcs=[f"study{seed}"])
    series_uid = generate_uid(uid_root, entropy_srcs=[f"series{seed}{series_description}"])
    frame_uid = generate_uid(uid_root, entropy_srcs=[f"frame{seed}"])
    row_dir, col_dir = image.direction[:, 0], image.direction[:, 1]  # DICOM: row direction = increasing column index
    today = datetime.date(2020, 1, 1).strftime("%Y%m%d")
    paths = []
    for k in range(image.shape[2]):
        sop_uid = generate_uid(uid_root, entropy_srcs=[f"sop{seed}{series_description}{k}"])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / file_names.format(k=k)
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        for tag, value in ident.items():
            setattr(ds, tag, value)
        ds.SOPClassUID = pydicom.uid.CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "CT", series_description, 1, k + 1
        ds.StudyDate = ds.SeriesDate = today
        pos = np.asarray(image.origin) + image.direction @ (np.asarray(image.spacing) * np.array([0, 0, k]))
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{image.spacing[1]:.6f}", f"{image.spacing[0]:.6f}"]  # row spacing (j), column spacing (i)
        ds.SliceThickness = f"{image.spacing[2]:.6f}"
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "HU"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = image.shape[1], image.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows = j, columns = i
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
