"""Builders of small synthetic sources for the dataset-index tests (NIfTI, npz, DICOM in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SECRET_ID = "PAT-SECRET-0815"
SECRET_NAME = "Musterfrau^Erika"
SECRET_BIRTH = "19450317"
SECRET_ACCESSION = "ACC-SECRET-4242"
SECRET_INSTITUTION = "St. Secret Hospital"


def write_nifti(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    import nibabel as nib

    aff = np.diag(list(spacing) + [1.0])
    aff[:3, 3] = origin
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr), aff), str(path))
    return path


def volume(rng: np.random.Generator, shape=(12, 10, 8), label_value: int = 1):
    """A random CT-like volume and a box label map inside it."""
    img = rng.normal(0, 100, size=shape).astype(np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    lab[3:8, 2:6, 2:5] = label_value
    img[lab > 0] += 300
    return img, lab


def write_npz_archive(folder: Path, rng: np.random.Generator, n_groups: int = 30, with_csv: bool = True) -> Path:
    """An LIDC-style archive: cases ``examX/n`` with 2-4 64x64 rows each, class per case, a per-row CSV."""
    images, labels, keys, slices, rows_csv = [], [], [], [], []
    for g in range(n_groups):
        for n in range(1 + g % 3):
            cls = int((g + n) % 3 == 0)
            k = int(rng.integers(2, 5))
            diameter = float(rng.uniform(4, 30))
            for s in range(k):
                im = (rng.random((16, 16)) * 255).astype(np.uint8)
                images.append(im)
                labels.append(cls)
                keys.append(f"exam{g:03d}/{n}")
                slices.append(s)
                rows_csv.append((f"exam{g:03d}", n, s, diameter))
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "slices.npz", images=np.stack(images), labels=np.asarray(labels, np.uint8),
             nodule_key=np.asarray(keys), slice_index=np.asarray(slices))
    if with_csv:
        lines = ["exam_id,nodule_id,slice,diameter_mm"] + [f"{a},{b},{c},{d}" for a, b, c, d in rows_csv]
        (folder / "index.csv").write_text("\n".join(lines) + "\n")
    return folder


def write_dicom_series(folder: Path, *, series_uid: str, study_uid: str, patient_id: str = SECRET_ID,
                       patient_name: str = SECRET_NAME, n: int = 4, size: int = 8, seed: int = 0,
                       slope: str = "1") -> Path:
    """Write ``n`` axial CT slices with full patient identifiers (PatientName/ID, birth date, accession...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    r = np.random.default_rng(seed)
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid
        ds.PatientID = patient_id
        ds.PatientName = patient_name
        ds.PatientBirthDate = SECRET_BIRTH
        ds.AccessionNumber = SECRET_ACCESSION
        ds.InstitutionName = SECRET_INSTITUTION
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesDescription = "synthetic"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = ["0", "0", f"{2.0 * i:.1f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.7", "0.7"]
        ds.SliceThickness = "2.0"
        ds.Rows = size
        ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = "-1024"
        ds.PixelData = r.integers(0, 2000, size=(size, size), dtype=np.uint16).tobytes()
        ds.save_as(folder / f"slice{i:03d}.dcm", enforce_file_format=True)
    return folder


def phantom_nodule_index(root: Path, *, n_exams: int, malignant_fraction: float, folds: int = 2) -> Path:
    """A phantom LIDC-style nodule archive in ``root`` and its dataset index (folds by exam); returns the index."""
    from medeff.data.index_build import build_index
    from medeff.demo.phantom import make_nodule_archive

    make_nodule_archive(root, n_exams=n_exams, malignant_fraction=malignant_fraction, seed=1)
    build_index(root, root / "index.json", overrides=[f"folds.k={folds}", "class_names=[benign,malignant]"])
    return root / "index.json"
