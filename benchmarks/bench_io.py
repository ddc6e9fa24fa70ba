"""DICOM series loading speed: medeff (with full validation) against SimpleITK and MONAI, in one process.

Contenders, run interleaved (rotating order) on warm files, median of repeats:

* ``medeff``: ``medeff.io.read_dicom_series(folder)``: header scan, series choice, every check, pixels in HU;
* ``sitk``: SimpleITK ``ImageSeriesReader`` alone: ``GetGDCMSeriesFileNames`` + ``Execute`` (no array copy);
* ``sitk_exec``: only ``ImageSeriesReader.Execute`` on a file list sorted beforehand (untimed), the
  strictest peer: it does no folder scan, no sorting and no validation;
* ``monai``: MONAI ``LoadImage(reader="PydicomReader", image_only=True)``.

Cases: the 64-slice Lung-PET-CT-Dx series from ../shared/data (skipped when absent) and a generated
512x512x200 CT series (uint16 stored, 12 bits, intercept -1024) written with pydicom into a temp folder.

Usage::

    .venv/bin/python benchmarks/bench_io.py [--repeats 5] [--monai-repeats 3] [--json bench_io.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDEFF_SHARED_DATA", REPO.parent / "shared" / "data"))
LUNG = SHARED / "chest_ct_lung_pet_ct_dx" / "Lung_Dx-A0001_CT_5mm_kernelL"


def generate_series(folder: Path, n: int = 200, size: int = 512, seed: int = 0) -> Path:
    """Write an ``n``-slice ``size``x``size`` CT series (explicit VR little endian) and return its folder."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2000, size=(size, size), dtype=np.uint16)
    series_uid, study_uid = generate_uid(), generate_uid()
    order = rng.permutation(n)  # file names unrelated to positions
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series_uid, study_uid
        ds.PatientID, ds.SeriesDescription, ds.InstanceNumber = "BENCH", "bench", k + 1
        ds.ImagePositionPatient = [-250.0, -250.0, -400.0 + 1.25 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.SliceThickness = 1.25
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.roll(base, k, axis=0).tobytes()
        ds.save_as(folder / f"IM{order[k]:05d}.dcm", enforce_file_format=True)
    return folder


def load_medeff(folder: Path):
    from medeff.io import read_dicom_series

    return read_dicom_series(folder).array


def load_sitk(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


_SORTED: dict[Path, list[str]] = {}


def load_sitk_exec(folder: Path):
    import SimpleITK as sitk

    if folder not in _SORTED:
        _SORTED[folder] = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(_SORTED[folder])
    return reader.Execute()


def load_monai(folder: Path):
    from monai.transforms import LoadImage

    return LoadImage(reader="PydicomReader", image_only=True)(str(folder))


CONTENDERS = {"medeff": load_medeff, "sitk": load_sitk, "sitk_exec": load_sitk_exec, "monai": load_monai}


def bench_case(folder: Path, repeats: int, monai_repeats: int) -> dict[str, list[float]]:
    """Time each contender on ``folder``, interleaved with a rotating order; one warm-up each."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for fn in CONTENDERS.values():
        fn(folder)  # warm-up: imports, page cache
    names = list(CONTENDERS)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if name == "monai" and len(times[name]) >= monai_repeats:
                continue
            t0 = time.perf_counter()
            result = CONTENDERS[name](folder)
            times[name].append(time.perf_counter() - t0)
            del result
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--monai-repeats", type=int, default=3)
    parser.add_argument("--slices", type=int, default=200, help="slices of the generated series")
    parser.add_argument("--json", default="bench_io.json", help="where to write the results (JSON)")
    args = parser.parse_args(argv)

    import logging

    logging.getLogger("medeff").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(2)
    cases: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="medeff-bench-io-") as tmp:
        if LUNG.is_dir():
            cases["lung_pet_ct_dx_64x512x512"] = LUNG
        else:
            print(f"skipping the Lung-PET-CT-Dx case: {LUNG} not found", file=sys.stderr)
        t0 = time.perf_counter()
        cases[f"generated_{args.slices}x512x512"] = generate_series(Path(tmp) / "gen", n=args.slices)
        print(f"generated {args.slices} slices in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        results = {}
        for case, folder in cases.items():
            times = bench_case(folder, args.repeats, args.monai_repeats)
            med = {name: statistics.median(ts) for name, ts in times.items()}
            results[case] = {
                "median_s": med,
                "times_s": times,
                "medeff_over_sitk": med["medeff"] / med["sitk"],
                "medeff_over_sitk_exec": med["medeff"] / med["sitk_exec"],
                "monai_over_medeff": med["monai"] / med["medeff"],
            }
    print(f"\n{'case':28s} {'medeff s':>9s} {'sitk s':>8s} {'sitk_exec s':>11s} {'monai s':>8s} "
          f"{'medeff/sitk':>11s} {'medeff/sitk_exec':>16s} {'monai/medeff':>12s}")
    for case, res in results.items():
        m = res["median_s"]
        print(f"{case:28s} {m['medeff']:9.3f} {m['sitk']:8.3f} {m['sitk_exec']:11.3f} {m['monai']:8.3f} "
              f"{res['medeff_over_sitk']:11.2f} {res['medeff_over_sitk_exec']:16.2f} {res['monai_over_medeff']:12.1f}")
    print("goals: medeff/sitk <= 1.2 (medeff/sitk_exec too), monai/medeff >= 4")
    sys.path.insert(0, str(REPO))
    from medeff.utils.atomic import write_json_atomic

    write_json_atomic(args.json, {"command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
                                  "repeats": args.repeats, "monai_repeats": args.monai_repeats,
                                  "cpu_count": os.cpu_count(), "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
