"""Validation of a dataset index: every problem of every case is collected, then raised as one error.

Cheap checks run always (structure, folds, files present, headers: dimensionality and label/image geometry);
voxel checks (NaN/inf voxels, empty or non-integer label maps) run when ``check_voxels`` is set, and always when
the index is built.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medeff.data.folds import split_groups
from medeff.data.index_images import Header, read_dicom_voxels, read_header, read_voxels, reorient
from medeff.data.index_types import TASKS, CaseRecord, DatasetIndex
from medeff.errors import IndexValidationError, InputError, MedeffError

__all__ = ["Problem", "CaseInspection", "inspect_case", "validate_index", "load_index", "raise_problems",
           "unknown_labels_problem", "UNKNOWN_LABELS_FIX", "outside_root_problems"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one case."""

    case_id: str
    file: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"- {self.case_id} ({self.file}): {self.problem.rstrip('.')}. Fix: {self.fix.rstrip('.')}."


def raise_problems(problems: list[Problem], where: str, path: str | None = None) -> None:
    """Raise one :class:`IndexValidationError` listing every problem (no-op when the list is empty)."""
    if not problems:
        return
    cases = sorted({p.case_id for p in problems})
    lines = "\n".join(p.line() for p in problems)
    err = IndexValidationError(
        f"{where}: {len(problems)} problem(s) in {len(cases)} case(s):\n{lines}\n",
        hint="fix every case listed (or remove it from the source) and run again.",
        path=path,
    )
    err.problems = list(problems)  # type: ignore[attr-defined]
    raise err


@dataclass
class CaseInspection:
    """What :func:`inspect_case` found: problems, the image header and (when loaded) voxels.

    ``label_reoriented`` is True when the label map covers the image's voxels in another axis order or direction
    (e.g. LAS vs LPS); ``label`` is then returned on the image grid.
    """

    problems: list[Problem] = field(default_factory=list)
    header: Header | None = None
    image: np.ndarray | None = None
    label: np.ndarray | None = None
    label_reoriented: bool = False


def _npz_shape(path: Path, key: str) -> tuple[int, ...]:
    with zipfile.ZipFile(path) as zf:
        with zf.open(f"{key}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read(fh)  # header only, no voxels
    return tuple(int(s) for s in shape)


def inspect_case(
    index: DatasetIndex,
    case: CaseRecord,
    *,
    check_voxels: bool = False,
    load: bool = False,
    atol: float = 1e-3,
) -> CaseInspection:
    """Check one case's files; optionally load its voxels.

    Args:
        index: the index (root, task, spatial_dims).
        case: the record.
        check_voxels: also read voxels and check NaN/inf and label contents.
        load: keep the voxels (first channel / archive rows, and the label map) in the result.
        atol: tolerance (mm) for comparing label and image geometry.
    """
    out = CaseInspection()
    cid = case.case_id

    def bad(file: str, problem: str, fix: str) -> None:
        out.problems.append(Problem(cid, file, problem, fix))

    want_voxels = check_voxels or load
    if case.archive is not None:
        apath = index.resolve(case.archive.path)
        if not apath.is_file():
            bad(case.archive.path, "archive file is missing", "restore the archive or re-create the index")
            return out
        try:
            shape = _npz_shape(apath, case.archive.key)
        except (KeyError, OSError, ValueError, zipfile.BadZipFile) as exc:
            bad(case.archive.path, f"cannot read array '{case.archive.key}' ({type(exc).__name__})",
                "check the archive (a NumPy .npz) and archive.images_key")
            return out
        rows = list(case.archive.rows)
        if not rows or min(rows) < 0 or max(rows) >= shape[0]:
            bad(case.archive.path, f"rows {rows[:5]} are out of range for {shape[0]} rows",
                "re-create the index from this archive")
            return out
        if len(shape) - 1 != index.spatial_dims:
            bad(case.archive.path, f"rows are {len(shape) - 1}D but the index is {index.spatial_dims}D",
                "re-create the index")
        out.header = Header((len(rows),) + shape[1:], None, None, None, None, "")
        if want_voxels:
            from medeff.data.index_images import load_archive_array

            arr = load_archive_array(apath, case.archive.key)[rows]
            _check_image_voxels(arr, case.archive.path, bad)
            out.image = arr if load else None
        _check_class(index, case, bad)
        return out

    if not case.image:
        bad("-", "has no image", "re-create the index")
        return out
    headers: list[Header | None] = []
    for rel in case.image:
        p = index.resolve(rel)
        if case.series_uid is not None or (p.is_dir() and index.source_kind in ("dicom", "csv")):
            headers.append(None)  # DICOM series: geometry comes with the voxels
            if not p.is_dir():
                bad(rel, "DICOM series folder is missing", "restore the folder or re-create the index")
            continue
        if not p.exists():
            bad(rel, "image file is missing", "restore the file or re-create the index")
            headers.append(None)
            continue
        try:
            headers.append(read_header(p))
        except MedeffError as exc:
            bad(rel, f"cannot read the image header ({exc.message})", exc.hint or "re-export the file")
            headers.append(None)
    if out.problems:
        return out
    images: list[np.ndarray] = []
    if want_voxels:
        for rel, h in zip(case.image, headers):
            try:
                if h is None:
                    arr, h2 = read_dicom_voxels(index.resolve(rel), case.series_uid)
                    headers[case.image.index(rel)] = h2
                else:
                    arr = read_voxels(index.resolve(rel))
            except (MedeffError, ImportError, RuntimeError, OSError) as exc:
                bad(rel, f"cannot read the voxels ({getattr(exc, 'message', exc)})",
                    getattr(exc, "hint", None) or "re-export the file")
                return out
            images.append(arr)
    hdr0 = headers[0]
    out.header = hdr0
    if hdr0 is not None and hdr0.ndim != index.spatial_dims:
        bad(case.image[0], f"image is {hdr0.ndim}D (shape {list(hdr0.shape)}) but the index is "
            f"{index.spatial_dims}D", "convert the image, or index 2D and 3D data separately")
    for rel, h in zip(case.image[1:], headers[1:]):
        if h is not None and hdr0 is not None and not h.same_grid(hdr0, atol=atol):
            bad(rel, f"channel geometry differs from channel 0 ({h.describe()} vs {hdr0.describe()})",
                "resample all channels of a case onto one grid")
    if want_voxels:
        for rel, arr in zip(case.image, images):
            _check_image_voxels(arr, rel, bad)
        out.image = images[0] if load and images else None

    if index.task == "segmentation":
        _check_label_map(index, case, hdr0, want_voxels, load, atol, bad, out)
    elif index.task == "classification":
        _check_class(index, case, bad)
    return out


def _check_image_voxels(arr: np.ndarray, rel: str, bad) -> None:
    if arr.dtype.kind in "fc":
        n_nan = int(np.count_nonzero(np.isnan(arr)))
        n_inf = int(np.count_nonzero(np.isinf(arr)))
        if n_nan or n_inf:
            bad(rel, f"image has {n_nan} NaN and {n_inf} infinite voxel(s)",
                "repair or re-export the image (e.g. replace NaN with the background value)")


def _check_class(index: DatasetIndex, case: CaseRecord, bad) -> None:
    if index.task != "classification":
        return
    n = len(index.class_names)
    if not isinstance(case.label, int) or isinstance(case.label, bool) or not 0 <= case.label < n:
        bad(case.image[0] if case.image else (case.archive.path if case.archive else "-"),
            f"class {case.label!r} is not an index into class_names {index.class_names}",
            "re-create the index with the full class_names list")


def _check_label_map(index, case, hdr0, want_voxels, load, atol, bad, out) -> None:
    if case.label is None or not isinstance(case.label, str):
        bad(case.image[0], "segmentation case has no label map", "add the label map or remove the case")
        return
    lp = index.resolve(case.label)
    if not lp.exists():
        bad(case.label, "label map file is missing", "restore the file or re-create the index")
        return
    try:
        lh = read_header(lp)
    except MedeffError as exc:
        bad(case.label, f"cannot read the label map header ({exc.message})", exc.hint or "re-export it")
        return
    axis_map = None
    if hdr0 is not None and not lh.same_grid(hdr0, atol=atol):
        axis_map = lh.axis_map_to(hdr0, atol=atol)
        if axis_map is None:
            bad(case.label, f"label map geometry differs from the image ({lh.describe()} vs image "
                f"{hdr0.describe()})",
                "resample the label map onto the image grid (nearest neighbour) or pair it with the right image")
            return
        out.label_reoriented = True  # same voxels, other axis order/direction: loaders reorient both by affine
    if not want_voxels:
        return
    try:
        lab = read_voxels(lp)
    except MedeffError as exc:
        bad(case.label, f"cannot read the label map ({exc.message})", exc.hint or "re-export it")
        return
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)):
            bad(case.label, "label map has NaN/infinite voxels", "re-export the label map with integer labels")
            return
        if not np.all(lab == np.round(lab)):
            bad(case.label, "label map has non-integer values", "label maps must hold integer label ids")
            return
    if lab.size and lab.dtype.kind in "if" and lab.min() < 0:
        negative = sorted(int(v) for v in np.unique(lab[lab < 0]))
        bad(case.label, f"label map holds negative value(s) {negative[:10]} ({int(np.count_nonzero(lab < 0))} "
            "voxel(s)); label values are 0 (background) and the declared labels",
            "set those voxels to 0 or to a declared label value (a value such as -1 for 'unknown' or 'ignore' "
            "has no meaning in medeff's label maps)")
        return
    if getattr(index, "label_remap", None):
        from medeff.data.label_remap import remap_labels

        lab = remap_labels(lab, index.label_remap)  # only the kept values, under their new numbers
    if not np.any(lab):
        bad(case.label, "label map is empty (all background)" + (" after label_remap" if getattr(
            index, "label_remap", None) else ""), "check the label map, or remove the case")
    known = set(index.labels.values())
    if known:
        found = {int(v) for v in np.unique(lab)}
        unknown = sorted(found - known)
        if unknown:
            bad(case.label, unknown_labels_problem(unknown, index.labels), UNKNOWN_LABELS_FIX)
    if load:
        out.label = (reorient(lab, axis_map) if axis_map is not None else lab).astype(np.int64)


UNKNOWN_LABELS_FIX = ("add them to `labels` (name: value), keep a subset with `label_remap`, or fix the label map")


def unknown_labels_problem(values: list[int], labels: dict[str, int]) -> str:
    """The problem text for label values a map holds but the declared label set lacks."""
    declared = ", ".join(f"{k}={v}" for k, v in sorted(labels.items(), key=lambda kv: kv[1]))
    more = f" (and {len(values) - 10} more)" if len(values) > 10 else ""
    return f"label map holds label values {values[:10]}{more} that are not in the declared labels ({declared})"


def recorded_allow_outside_root(index: DatasetIndex) -> bool:
    """Whether the index was built with ``csv.allow_outside_root=true`` (recorded in its ``config``)."""
    csv_conf = (index.config or {}).get("csv") or {}
    return isinstance(csv_conf, dict) and csv_conf.get("allow_outside_root") is True


def _escapes(rel: str, root: str) -> bool:
    """Whether ``rel`` (relative to ``root``, or absolute) names a file outside ``root`` once ``..`` parts are
    resolved (lexically: symbolic links under the root are the data's own layout and are followed as on disk)."""
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, rel))
    return os.path.commonpath([full, base]) != base


def outside_root_problems(index: DatasetIndex, allow_outside_root: bool | None = None) -> list[Problem]:
    """One problem per file path of a case (images, label map, archive) that escapes the index's root.

    Args:
        index: the index.
        allow_outside_root: True accepts such paths; None takes what the index recorded (an index built with
            ``csv.allow_outside_root=true`` keeps the paths its trusted manifest gave).
    """
    if allow_outside_root is None:
        allow_outside_root = recorded_allow_outside_root(index)
    if allow_outside_root:
        return []
    problems = []
    fix = (f"re-create the index with `medeff index` so every file lies under its root '{index.root}' (or pass "
           "root= to load_index when the data moved); if the index is trusted and was built with files outside "
           "its root, load it with load_index(path, allow_outside_root=True)")
    for c in index.all_cases:
        entries = [(f"image[{i}]", p) for i, p in enumerate(c.image)]
        if index.task == "segmentation" and isinstance(c.label, str) and c.label:
            entries.append(("label", c.label))
        if c.archive is not None:
            entries.append(("archive.path", c.archive.path))
        for field_name, rel in entries:
            if rel and _escapes(str(rel), index.root):
                problems.append(Problem(c.case_id, str(rel), f"{field_name} lies outside the index root "
                                        f"'{index.root}' (absolute or '..' path)", fix))
    return problems


def validate_index(index: DatasetIndex, *, check_files: bool = True, check_voxels: bool = False,
                   atol: float = 1e-3, allow_outside_root: bool | None = None) -> None:
    """Validate ``index``; raise one :class:`IndexValidationError` listing every problem found.

    File paths that escape the index's root (``../../etc/passwd``, an absolute path elsewhere) are problems and
    their files are never opened, unless ``allow_outside_root`` (or, when None, the index's recorded
    ``csv.allow_outside_root``) accepts them.

    Args:
        index: the index.
        check_files: check that files exist and their headers agree (cheap: headers only).
        check_voxels: also read the voxels (NaN/inf, empty label maps).
        atol: geometry tolerance in mm.
        allow_outside_root: accept paths outside the root; None: as recorded in the index.

    Raises:
        IndexValidationError: any problem, all of them listed.
    """
    where = f"Index '{index.path}'" if index.path else "Index"
    problems: list[Problem] = []
    if index.task not in TASKS:
        problems.append(Problem("-", index.path or "-", f"unknown task {index.task!r}", f"use one of {TASKS}"))
    if index.spatial_dims not in (2, 3):
        problems.append(Problem("-", index.path or "-", f"spatial_dims is {index.spatial_dims}", "use 2 or 3"))
    seen: set[str] = set()
    for c in index.all_cases:
        if c.case_id in seen:
            problems.append(Problem(c.case_id, "-", "case id appears more than once", "re-create the index"))
        seen.add(c.case_id)
        if not 0 <= c.fold < index.num_folds:
            problems.append(Problem(c.case_id, "-", f"fold {c.fold} is outside 0..{index.num_folds - 1}",
                                    "re-create the index"))
    split = split_groups([c.group for c in index.all_cases], [c.fold for c in index.all_cases])
    for g, folds in split.items():
        ids = [c.case_id for c in index.all_cases if c.group == g]
        for cid in ids:
            problems.append(Problem(cid, "-", f"patient group {g} is split across folds {folds}",
                                    "all cases of one patient must share a fold; re-create the index"))
    escaping = outside_root_problems(index, allow_outside_root)
    problems.extend(escaping)
    if check_files or check_voxels:
        outside = {p.case_id for p in escaping}
        for c in index.all_cases:
            if c.case_id not in outside:  # a file outside the root is not opened
                problems.extend(inspect_case(index, c, check_voxels=check_voxels, atol=atol).problems)
    raise_problems(problems, where, index.path)


def load_index(path: str | Path, *, check_files: bool = True, check_voxels: bool = False,
               root: str | Path | None = None, atol: float | None = None,
               allow_outside_root: bool | None = None) -> DatasetIndex:
    """Read and validate an index written by ``medeff index``.

    Args:
        path: the index JSON.
        check_files: check files and headers (default True).
        check_voxels: also check voxels (NaN/inf, empty label maps); slower.
        root: resolve relative paths against this folder instead of the recorded root (moved data).
        atol: geometry tolerance in mm (default: the one recorded in the index, else 1e-3).
        allow_outside_root: accept file paths outside the index's root (absolute, or with ``..`` leading out);
            None (default) accepts them only when the index was built with ``csv.allow_outside_root=true``.

    Returns:
        The validated :class:`DatasetIndex`.

    Raises:
        InputError: the file is missing or not JSON.
        IndexValidationError: any invalid case (all listed at once), including paths outside the root.
    """
    path = Path(path)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"Index file '{path}' does not exist.", hint="create it with `medeff index`.",
                         path=str(path)) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"Index file '{path}' is not valid JSON ({exc}).",
                         hint="re-create it with `medeff index` (it is written atomically, so it was edited).",
                         path=str(path)) from exc
    index = DatasetIndex.from_json(data, path=str(path))
    if root is not None:
        index.root = str(Path(root))
    if atol is None:
        atol = float(((index.config or {}).get("validation") or {}).get("geometry_atol", 1e-3))
    validate_index(index, check_files=check_files, check_voxels=check_voxels, atol=atol,
                   allow_outside_root=allow_outside_root)
    return index
