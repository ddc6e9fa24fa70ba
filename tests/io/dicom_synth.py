"""Synthetic DICOM series written with pydicom in tmp_path, so the DICOM rules are tested without shared data.

Every series carries fake patient identifiers (``SECRET_ID``, ``SECRET_NAME``) so tests can check they never
leak into errors, logs, reprs or metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SECRET_ID = "PATIENT-SECRET-4711"
SECRET_NAME = "Doe^Secretia"


def write_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    position,
    orientation=(1, 0, 0, 0, 1, 0),
    spacing=(0.7, 0.5),
    series_uid="1.2.826.0.1.3680043.8.498.1001",
    study_uid="1.2.826.0.1.3680043.8.498.2001",
    modality="CT",
    description="synthetic axial",
    instance=1,
    slope=1.0,
    intercept=-1024.0,
    implicit=False,
    extra: dict | None = None,
    drop: tuple[str, ...] = (),
    private_bytes: int = 0,
) -> Path:
    """Write one CT image file; ``pixels`` is ``[row, column]`` stored values (uint16 or int16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    sop_uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = SECRET_ID
    ds.PatientName = SECRET_NAME
    ds.PatientBirthDate = "19010101"
    ds.AccessionNumber = "ACC-SECRET-99"
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{v:g}" for v in spacing]
    ds.SliceThickness = "2.0"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if pixels.dtype == np.int16 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    for key in drop:
        delattr(ds, key)
    if private_bytes:  # a large private element pushes the pixel data far into the file
        ds.add_new(0x00090010, "LO", "MEDEFF TEST")
        ds.add_new(0x00091010, "OB", b"\x01" * private_bytes)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return path


def make_series(
    folder: Path,
    n: int = 5,
    *,
    shape=(6, 8),
    step=(0.0, 0.0, 2.0),
    origin=(-10.0, -20.0, 30.0),
    names=None,
    seed: int = 0,
    skip=(),
    dtype=np.uint16,
    **kwargs,
) -> tuple[Path, np.ndarray]:
    """Write ``n`` slices at ``origin + k * step`` (slices in ``skip`` omitted).

    Returns:
        (folder, stored) where ``stored[k]`` are the stored pixel values of slice k (``[row, column]``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 3000, size=(n,) + tuple(shape)).astype(dtype)
    names = names or [f"slice{k:03d}.dcm" for k in range(n)]
    for k in range(n):
        if k in skip:
            continue
        pos = np.asarray(origin) + k * np.asarray(step, dtype=float)
        write_slice(folder / names[k], stored[k], position=pos, instance=k + 1, **kwargs)
    return folder, stored


def sitk_reference(folder: Path):
    """SimpleITK ImageSeriesReader on ``folder`` (GDCM sorting): the peer every clean load must equal."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(True)


def assert_equals_sitk(image, ref) -> None:
    """Voxels identical, spacing/origin/direction within 1e-4."""
    import SimpleITK as sitk

    expected = sitk.GetArrayFromImage(ref).transpose(2, 1, 0)
    assert image.array.shape == expected.shape
    np.testing.assert_array_equal(image.array, expected)
    np.testing.assert_allclose(image.spacing, ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.direction.ravel(), ref.GetDirection(), atol=1e-4)
