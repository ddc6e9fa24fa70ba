"""Scanner for class folders of 2D images (``source.kind=folders``): ``SOURCE/<class>/<image>.jpg``.

Each image file is one case; the class is the name of the folder holding it (mapped through
``folders.class_map`` when given). JPEG, PNG, BMP and TIFF are read as one grey channel (RGB is converted, see
:mod:`medeff.io.raster`). Files with other suffixes (a README, a CSV) are ignored. Image sets of this kind rarely
carry patient identifiers: each image is then its own group, unless ``folders.group_regex`` extracts one from the
path, or ``groups.near_duplicates`` joins identical and near-identical images into one group (see
:mod:`medeff.data.grouping`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from medeff.data.index_sources import RawCase, Scan
from medeff.errors import ConfigError, InputError
from medeff.io.raster import RASTER_SUFFIXES

__all__ = ["scan_folders", "looks_like_image_folders", "image_files"]

# files that make a folder look like DICOM (then auto-detection does not pick `folders`)
_DICOM_LIKE = (".dcm", ".dicom", ".ima", "")


def image_files(source: Path) -> list[Path]:
    """Raster image files below ``source`` (hidden files and folders skipped), sorted by relative path."""
    out = []
    for p in source.rglob("*"):
        rel = p.relative_to(source)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.name.lower().endswith(RASTER_SUFFIXES):
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(source).as_posix())


def looks_like_image_folders(source: Path) -> bool:
    """True when ``source`` holds raster images and no file that could be DICOM (``.dcm`` or no suffix)."""
    has_images = False
    for p in source.rglob("*"):
        if any(part.startswith(".") for part in p.relative_to(source).parts) or not p.is_file():
            continue
        if p.name.lower().endswith(RASTER_SUFFIXES):
            has_images = True
        elif p.suffix.lower() in _DICOM_LIKE:
            return False
    return has_images


def _class_of(folder: str, class_map: dict[str, str]) -> str:
    return class_map.get(folder, folder) if class_map else folder


def scan_folders(source: Path, cfg: Any) -> Scan:
    """One case per image; class from the image's folder name; group from ``folders.group_regex`` or the file.

    Raises:
        InputError: ``source`` is not a folder or holds no images.
        ConfigError: ``class_names`` or ``folders.class_map`` do not match the folders found.
    """
    from medeff.data.index_sources import _group_from

    if not source.is_dir():
        raise InputError(f"Image-folder source '{source}' is not a folder.",
                         hint="pass the folder whose sub-folders are the classes.", path=str(source))
    fc = cfg.get("folders") or {}
    class_map = {str(k): str(v) for k, v in (fc.get("class_map") or {}).items()}
    files = image_files(source)
    if not files:
        raise InputError(
            f"No images ({', '.join(RASTER_SUFFIXES)}) found below '{source}'.",
            hint="pass the folder whose sub-folders (one per class) hold the images.", path=str(source))
    rels = [p.relative_to(source).as_posix() for p in files]
    loose = [r for r in rels if "/" not in r]
    problems = [(r, r, "lies directly in the source folder, outside any class folder",
                 "move it into the folder of its class") for r in loose]
    folder_of = {r: Path(r).parent.name for r in rels if "/" in r}
    found = sorted({_class_of(f, class_map) for f in folder_of.values()})
    unmapped = sorted(set(class_map) - set(folder_of.values()))
    if unmapped:
        raise ConfigError(f"folders.class_map names folder(s) {unmapped} that hold no images below '{source}' "
                          f"(image folders: {sorted(set(folder_of.values()))}).",
                          hint="fix the folder names in folders.class_map (they are case-sensitive).")
    class_names = [str(c) for c in cfg.get("class_names") or []] or found
    missing = sorted(set(found) - set(class_names))
    if missing:
        raise ConfigError(f"Image folders give class(es) {missing} that are not in class_names {class_names}.",
                          hint="add them to class_names, map their folders with folders.class_map, or remove them.")
    regex = fc.get("group_regex")
    cases = []
    for rel, folder in folder_of.items():
        label = class_names.index(_class_of(folder, class_map))
        group = _group_from(str(regex) if regex else None, rel, rel)
        cases.append(RawCase(image=[rel], label=label, group_key=group, source_ref=rel,
                             metadata={"folder": folder}))
    counts = Counter(c.label for c in cases)
    if len(counts) < 2:
        raise InputError(f"Image-folder source '{source}' gives only {len(counts)} class ({found}).",
                         hint="a classification index needs at least two class folders.", path=str(source))
    from medeff.data.index_sources import _channel_names

    return Scan("folders", source, "classification", cases, _channel_names(cfg, 1), class_names=class_names,
                spatial_dims=2, problems=problems)
