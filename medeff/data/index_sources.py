"""Scanners that turn a source into raw cases: DICOM and NIfTI folders here, CSV manifests and array archives in
:mod:`medeff.data.index_tables`, class folders of 2D images in :mod:`medeff.data.index_folders`.

A raw case still carries its original group key (e.g. the DICOM PatientID) in memory; the index builder
replaces it with a pseudonym before anything is written or logged.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medeff.data.index_images import NIFTI_SUFFIXES, is_nifti
from medeff.data.index_types import ArchiveRef
from medeff.errors import ConfigError, InputError
from medeff.utils.logging import get_logger

__all__ = ["RawCase", "Scan", "detect_kind", "scan_source", "IDENTIFIER_COLUMNS"]

log = get_logger(__name__)

IMAGE_SUFFIXES = NIFTI_SUFFIXES + (".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff", ".npy")
# column names that may hold direct identifiers: never copied into case metadata
IDENTIFIER_COLUMNS = r"(?i)(name|birth|accession|mrn|institution|address|phone|patient|exam|study|series|uid|(^|_)id$)"
# the fix for a label that is not a declared class ({unset}: how to index without labels)
UNKNOWN_LABEL_FIX = ("a value such as -1 that marks 'unknown' is not a class: to index an unlabelled set leave the "
                     "labels out ({unset}); otherwise remove those {what} or give them a declared class")


@dataclass
class RawCase:
    """A case before pseudonymisation (``group_key`` and ``source_ref`` are never written to the index)."""

    image: list[str]
    label: str | int | None
    group_key: str
    source_ref: str
    archive: ArchiveRef | None = None
    series_uid: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    identifiers: tuple[str, ...] = ()
    fold: int | None = None  # a fold fixed by the source (CSV csv.fold_col), else drawn by the indexer


@dataclass
class Scan:
    """What a scanner found."""

    kind: str
    root: Path
    task: str
    cases: list[RawCase]
    channel_names: list[str]
    class_names: list[str] = field(default_factory=list)
    spatial_dims: int = 3
    problems: list[tuple[str, str, str, str]] = field(default_factory=list)  # (ref, file, problem, fix)


def detect_kind(source: Path, cfg: Any = None) -> str:
    """Guess the source kind: ``csv``, ``archive``, ``nifti``, ``folders`` or ``dicom``.

    A folder is NIfTI when it has the configured images folder or ``<case><image_suffix>.nii.gz`` files, or holds
    nothing but NIfTI files; a folder of JPEG/PNG/BMP/TIFF images with no DICOM-like file (``.dcm`` or no suffix)
    is ``folders`` (class folders of 2D images); otherwise it is read as DICOM (other NIfTI files beside a DICOM
    export are ignored).

    Raises:
        InputError: the source does not exist or holds nothing indexable.
    """
    if not source.exists():
        raise InputError(f"Source '{source}' does not exist.", hint="check the path.", path=str(source))
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return "csv"
        if source.suffix.lower() == ".npz":
            return "archive"
        raise InputError(
            f"Source '{source}' is a file that is neither a CSV manifest nor an .npz archive.",
            hint="pass a folder (DICOM or NIfTI), a .csv manifest or an .npz archive.",
            path=str(source),
        )
    if list(source.glob("*.npz")):
        return "archive"
    nc = cfg.nifti if cfg is not None else None
    if nc is not None and (source / str(nc.images_dir)).is_dir():
        return "nifti"
    niftis = [p for p in source.rglob("*.nii*") if is_nifti(p)]
    if nc is not None and any(_strip_suffix(p.name).endswith(str(nc.image_suffix)) for p in niftis):
        return "nifti"
    if not niftis:
        from medeff.data.index_folders import looks_like_image_folders

        if looks_like_image_folders(source):
            return "folders"
    others = any(p.is_file() and not is_nifti(p) and not p.name.startswith(".") for p in source.rglob("*"))
    return "dicom" if others or not niftis else "nifti"


def scan_source(source: Path, kind: str, cfg: Any) -> Scan:
    """Dispatch to the scanner of ``kind`` (see :func:`detect_kind`)."""
    from medeff.data.index_folders import scan_folders
    from medeff.data.index_tables import scan_archive, scan_csv
    from medeff.utils.options import look_up

    scanners = {"dicom": scan_dicom, "nifti": scan_nifti, "csv": scan_csv, "archive": scan_archive,
                "folders": scan_folders}
    return look_up(kind, scanners, what="source kind", key="source.kind")(source, cfg)


# ---------------------------------------------------------------------------------------------------------------------
def scan_dicom(source: Path, cfg: Any) -> Scan:
    """One case per DICOM series; group = PatientID (or StudyInstanceUID when ``dicom.group_by=study``)."""
    try:
        from medeff.io import find_series  # type: ignore[attr-defined]
    except ImportError as exc:
        raise InputError(
            "DICOM folders cannot be indexed: this medeff build has no DICOM series reader (medeff.io.find_series).",
            hint="convert the series to NIfTI first, or install a medeff build with DICOM support.",
        ) from exc
    infos = find_series(source)
    if not infos:
        raise InputError(
            f"No DICOM series found under '{source}'.",
            hint="pass a folder holding DICOM files, or set source.kind to nifti/csv/archive.",
            path=str(source),
        )
    group_by = str(cfg.dicom.group_by)
    cases = []
    modalities = set()
    for info in sorted(infos, key=lambda s: (str(s.patient_key or ""), str(s.study_uid), str(s.series_uid))):
        files = [Path(f) for f in info.files]
        folder = Path(_common_parent(files)) if files else source
        rel = _rel(folder, source)
        patient = str(info.patient_key or "")
        if group_by == "study" or not patient:
            group = f"study:{info.study_uid}"
        else:
            group = f"patient:{patient}"
        modalities.add(str(info.modality or "image"))
        meta = {"modality": info.modality}
        cases.append(RawCase(image=[rel], label=None, group_key=group, source_ref=f"{rel}#{info.series_uid}",
                             series_uid=str(info.series_uid), metadata=meta,
                             identifiers=(patient,) if patient else ()))
    channels = _channel_names(cfg, 1, default=[sorted(modalities)[0]] if len(modalities) == 1 else ["image"])
    return Scan("dicom", source, "unlabelled", cases, channels)


def _common_parent(files: list[Path]) -> str:
    import os

    return os.path.commonpath([str(f.parent) for f in files])


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _inside(path: str, root: Path) -> bool:
    """Whether ``path`` (relative to ``root``, or absolute) lies under ``root`` once resolved as the file system
    will open it: symbolic links (of the path and of the root) and ``..`` parts are followed (``os.path.realpath``),
    so a link inside the root that points elsewhere counts as outside."""
    import os

    real_root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(os.path.abspath(root), path))
    return os.path.commonpath([full, real_root]) == real_root


def _strip_suffix(name: str) -> str:
    low = name.lower()
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return name


def _channel_names(cfg: Any, n: int, default: list[str] | None = None) -> list[str]:
    names = list(cfg.channel_names) if cfg.get("channel_names") else None
    if names is None:
        if default is not None and len(default) == n:
            return default
        return ["image"] if n == 1 else [f"channel_{i}" for i in range(n)]
    if len(names) != n:
        raise ConfigError(
            f"channel_names has {len(names)} name(s) {names} but the images have {n} channel(s).",
            hint=f"give {n} names, e.g. channel_names=[{','.join(f'c{i}' for i in range(n))}].",
        )
    return names


def _group_from(regex: str | None, text: str, fallback: str) -> str:
    if not regex:
        return fallback
    m = re.search(regex, text)
    if not m:
        return fallback
    return m.groupdict().get("group") or m.group(1 if m.groups() else 0)


def scan_nifti(source: Path, cfg: Any) -> Scan:
    """Images + label maps matched by ``nifti.rule``: ``folders`` (imagesTr/x + labelsTr/x) or ``suffix``."""
    nc = cfg.nifti
    rule = str(nc.rule)
    chan_re = re.compile(str(nc.channel_regex)) if nc.get("channel_regex") else None
    images: dict[str, dict[int, Path]] = defaultdict(dict)
    labels: dict[str, Path] = {}
    if rule == "folders":
        img_dir, lab_dir = source / str(nc.images_dir), source / str(nc.labels_dir)
        if not img_dir.is_dir():
            subs = sorted(p.name for p in source.iterdir() if p.is_dir())
            raise InputError(
                f"NIfTI source '{source}' has no images folder '{nc.images_dir}' (sub-folders: {subs[:10]}).",
                hint="set nifti.images_dir/nifti.labels_dir to your folder names, or nifti.rule=suffix for "
                "<name>_ct.nii.gz / <name>_seg.nii.gz pairs.",
                path=str(source),
            )
        for p in sorted(img_dir.iterdir()):
            if is_nifti(p):
                stem = _strip_suffix(p.name)
                m = chan_re.search(stem) if chan_re else None
                base, ch = (stem[: m.start()], int(m.group(1))) if m else (stem, 0)
                images[base][ch] = p
        if lab_dir.is_dir():
            for p in sorted(lab_dir.iterdir()):
                if is_nifti(p):
                    labels[_strip_suffix(p.name)] = p
    elif rule == "suffix":
        isuf, lsuf = str(nc.image_suffix), str(nc.label_suffix)
        for p in sorted(source.rglob("*")):
            if not is_nifti(p):
                continue
            stem = _strip_suffix(p.name)
            rel_base = str(p.parent.relative_to(source) / stem)
            if stem.endswith(isuf):
                images[rel_base[: -len(isuf)]][0] = p
            elif stem.endswith(lsuf):
                labels[rel_base[: -len(lsuf)]] = p
    else:
        from medeff.utils.options import look_up

        look_up(rule, ["folders", "suffix"], what="naming rule", key="nifti.rule")
    if not images:
        raise InputError(
            f"No NIfTI images found in '{source}' with naming rule '{rule}'.",
            hint="check nifti.rule, nifti.images_dir or nifti.image_suffix (see docs/dataset_index.md).",
            path=str(source),
        )
    labels_dir_exists = rule == "folders" and (source / str(nc.labels_dir)).is_dir()
    want_labels = bool(labels) or (bool(nc.require_labels) and labels_dir_exists)
    problems = []
    n_ch = {len(v) for v in images.values()}
    n_channels = max(n_ch)
    cases = []
    for base in sorted(images):
        chans = images[base]
        files = [_rel(chans[c], source) for c in sorted(chans)]
        if len(chans) != n_channels or sorted(chans) != list(range(n_channels)):
            problems.append((base, files[0], f"has channels {sorted(chans)}, expected 0..{n_channels - 1}",
                             "add the missing channel files or remove the case"))
        lab = labels.get(base)
        if want_labels and lab is None:
            problems.append((base, files[0], "has no label map", "add the label map or remove the image"))
        group = _group_from(nc.get("group_regex"), Path(base).name, Path(base).name)
        cases.append(RawCase(image=files, label=_rel(lab, source) if lab is not None else None,
                             group_key=group, source_ref=base))
    for base in sorted(set(labels) - set(images)):
        problems.append((base, _rel(labels[base], source), "label map has no image",
                         "add the image or remove the label map"))
    scan = Scan("nifti", source, "segmentation" if want_labels else "unlabelled", cases,
                _channel_names(cfg, n_channels), problems=problems)
    return scan
