"""``medeff convert SRC OUT``: DICOM series (or any readable image) to NIfTI / NRRD / MHA, geometry kept.

The source's name and the names of the folders under it (which often name the patient, e.g. ``DOE_JANE_MRN884213/``)
are withheld from log lines and errors (``<source>``, ``<folder>``); ``--keep-names`` shows them (de-identified
data). The output is named by the user and holds no patient identifier (readers drop them).
"""

from __future__ import annotations

import argparse

from medeff.io import DicomReadOptions, read_image, write_image
from medeff.utils.logging import get_logger

__all__ = ["HELP", "add_arguments", "run", "convert"]

HELP = "convert a DICOM series folder (or an image file) to .nii.gz / .nrrd / .mha, keeping its geometry"

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="DICOM folder (searched recursively) or image file")
    parser.add_argument("output", help="output file: .nii, .nii.gz, .nrrd, .mha or .mhd")
    parser.add_argument("--series-uid", default=None, help="read the series with this SeriesInstanceUID")
    parser.add_argument("--description", default=None, help="read the largest series with this SeriesDescription")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--on-gap", choices=["error", "interpolate"], default=None,
                        help="missing/irregular slices: refuse (default) or interpolate onto a uniform grid")
    parser.add_argument("--on-tilt", choices=["resample", "error"], default=None,
                        help="gantry tilt: resample onto an orthogonal grid (default) or refuse")
    parser.add_argument("--on-duplicate", choices=["drop_identical", "error"], default=None,
                        help="slices at the same position: drop exact copies (default) or refuse")
    parser.add_argument("--keep-names", action="store_true",
                        help="show the source's file and folder names in messages (de-identified data only)")


def run(args: argparse.Namespace) -> int:
    convert(args.source, args.output, series_uid=args.series_uid, description=args.description,
            overwrite=args.overwrite, keep_names=args.keep_names, on_gap=args.on_gap, on_tilt=args.on_tilt,
            on_duplicate=args.on_duplicate)
    return 0


def source_names(source) -> dict[str, str]:
    """``{name: placeholder}`` for the source's own name (and stem) and every folder name under it."""
    from pathlib import Path

    source = Path(source)
    name = source.name
    for suf in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    names = {}
    if source.is_dir():
        names = {p.name: "<folder>" for p in source.rglob("*") if p.is_dir()}
    names.update({source.name: "<source>", name: "<source>"})
    return names


def convert(source, output, *, series_uid: str | None = None, description: str | None = None,
            overwrite: bool = False, keep_names: bool = False, **policy: str | None):
    """Read ``source`` and write it to ``output``; returns the written path.

    Args:
        source: DICOM folder or image file.
        output: output image path (format from the suffix).
        series_uid, description: DICOM series choice (see :func:`medeff.io.read_dicom_series`).
        overwrite: replace an existing output.
        keep_names: show the source's file and folder names in log lines and errors (otherwise withheld).
        **policy: DICOM repair policy overrides (``on_gap``, ``on_tilt``, ``on_duplicate``).

    Raises:
        MedeffError: unreadable or refused input, or an existing output without ``overwrite``.
    """
    from pathlib import Path

    from medeff.utils.redact import Redactor

    redactor = Redactor() if keep_names or not Path(source).exists() else Redactor(source_names(source))
    with redactor.active():
        return _convert(source, output, series_uid=series_uid, description=description, overwrite=overwrite,
                        **policy)


def _convert(source, output, *, series_uid, description, overwrite, **policy):
    from pathlib import Path

    from medeff.utils.atomic import check_writable

    check_writable(output, overwrite=overwrite)  # fail before reading a large series
    options = {}
    if Path(source).is_dir() or not str(source).lower().endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")):
        options = {"series_uid": series_uid, "description": description,
                   "options": DicomReadOptions.from_config(**policy)}
    image = read_image(source, **options)
    path = write_image(image, output, overwrite=overwrite)
    shape = "x".join(str(n) for n in image.shape)
    spacing = "x".join(f"{s:g}" for s in image.spacing)
    repairs = f"; repairs: {' '.join(image.meta.get('repairs', []))}" if image.meta.get("repairs") else ""
    log.info("wrote %s (%s voxels, %s mm)%s", path, shape, spacing, repairs)
    return path
