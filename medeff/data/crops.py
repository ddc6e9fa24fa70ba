"""3D crops around nodule/tumour positions given in world millimetres (LPS), for the 3D nodule classifier.

For every row of a positions CSV (series, world position, optional size, optional class) the series is read with
:func:`medeff.io.read_image` (DICOM folder or image file; each series once), the world point is mapped to a
continuous voxel index through the series geometry (origin, direction, spacing), and a cube of
``size_voxels`` voxels at ``spacing_mm`` (isotropic) centred on the point is resampled (trilinear) on axes parallel
to the series' own. Cube voxels that fall outside the volume get ``pad_hu`` (air, -1000 HU); how many did is
recorded per crop (``padded_fraction``). A row whose size column is set gets a cube of that edge (mm) instead.

Coordinates are **world LPS millimetres**, the convention of DICOM ImagePositionPatient and SimpleITK
(x grows to the patient's left, y to posterior, z to superior). RAS coordinates (3D Slicer, nibabel) convert with
``x_lps = -x_ras, y_lps = -y_ras, z_lps = z_ras``.

Outputs (under ``out_dir``, every file written atomically): ``crops/<case_id>.nii.gz`` (one NIfTI per row, its own
affine placing it in the scanner's world) and ``crops.csv``, a manifest that ``medeff index`` reads as it is (columns
``case_id, image, label, patient_id`` plus metadata), the contract of ``conf/data/nodule_3d.yaml``. Crop names are
running pseudonyms and groups are keyed-hash pseudonyms: no file path, series name or patient identifier of the
input reaches the outputs; ``source_row`` (the CSV line) links a crop back to its row.

A second input layout, ``input_format=pixel_boxes``, takes per-slice tumour boxes in pixel columns/rows on named
DICOM files (PASCAL-VOC style, as exported by annotation tools); the boxes of one series on consecutive slices are
merged into one tumour whose world centre and extent come from each slice's ImagePositionPatient,
ImageOrientationPatient and PixelSpacing.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medeff.errors import ConfigError, InputError
from medeff.io.base import ImageData
from medeff.utils.logging import get_logger
from medeff.utils.progress import track

__all__ = ["CropTarget", "world_to_voxel", "voxel_to_world", "crop_cube", "read_targets", "read_box_targets",
           "extract_crops", "crops_config", "resolve_under_root"]

log = get_logger(__name__)


@dataclass
class CropTarget:
    """One requested crop: where (world LPS mm) in which series, and what is known about it.

    Attributes:
        row: line number in the input CSV (header = line 1), quoted in every error and kept as ``source_row``.
        series: series path as written in the CSV (relative to the root, or absolute); never written out.
        centre_lps: world position (mm, LPS) of the crop centre.
        edge_mm: cube edge in mm for this row, or None for the configured size.
        label: class name (after ``label_map``), or None when unlabelled.
        group: patient/group key (pseudonymised before anything is written), or None (the series is the group).
        extent_mm: tumour extent (mm per world axis) when known, kept as metadata.
    """

    row: int
    series: str
    centre_lps: np.ndarray
    edge_mm: float | None = None
    label: str | None = None
    group: str | None = None
    extent_mm: tuple[float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def crops_config(overrides: Sequence[str] = ()) -> Any:
    """Compose ``conf/crops.yaml`` with Hydra ``key=value`` overrides."""
    from medeff.config import compose

    return compose("crops", overrides)


# ---- geometry ----------------------------------------------------------------------------------------------------
def world_to_voxel(image: ImageData, points_lps: Any) -> np.ndarray:
    """Continuous voxel index ``[i, j, k]`` of world points (LPS mm), through origin, direction and spacing.

    Equals SimpleITK's ``TransformPhysicalPointToContinuousIndex``; rounding gives ``TransformPhysicalPointToIndex``.

    Args:
        image: the image whose grid is used.
        points_lps: ``(3,)`` or ``(N, 3)`` world points.

    Returns:
        Array of the same shape: continuous indices along the image's index axes.
    """
    p = np.asarray(points_lps, dtype=np.float64)
    m = image.direction * np.asarray(image.spacing)[None, :]  # columns: world step of one voxel along each axis
    idx = np.linalg.solve(m, (p.reshape(-1, 3) - np.asarray(image.origin)).T).T
    return idx.reshape(p.shape)


def voxel_to_world(image: ImageData, index: Any) -> np.ndarray:
    """World LPS position (mm) of continuous voxel indices ``[i, j, k]`` (inverse of :func:`world_to_voxel`)."""
    idx = np.asarray(index, dtype=np.float64)
    m = image.direction * np.asarray(image.spacing)[None, :]
    return (idx.reshape(-1, 3) @ m.T + np.asarray(image.origin)).reshape(idx.shape)


def inside_volume(image: ImageData, index: np.ndarray) -> np.ndarray:
    """Whether continuous indices lie within the volume (voxel centres +- half a voxel)."""
    shape = np.asarray(image.array.shape[:3])
    idx = np.asarray(index, dtype=np.float64).reshape(-1, 3)
    return np.all((idx >= -0.5) & (idx <= shape - 0.5), axis=1)


def crop_cube(image: ImageData, centre_lps: Any, *, size_voxels: int, spacing_mm: float,
              pad_value: float = -1000.0, order: int = 1) -> tuple[ImageData, float]:
    """Resample a cube centred on ``centre_lps`` from ``image`` (axes parallel to the image's own).

    Args:
        image: a 3D image (HU).
        centre_lps: world position (mm, LPS) of the cube centre.
        size_voxels: voxels per edge.
        spacing_mm: isotropic output spacing (mm).
        pad_value: value of cube voxels outside the volume (air: -1000 HU).
        order: interpolation order (1 = trilinear, 0 = nearest).

    Returns:
        ``(crop, padded_fraction)``: the crop with its geometry (its centre voxel position is ``centre_lps``) and
        the fraction of its voxels that lay outside the volume.
    """
    from scipy import ndimage

    n = int(size_voxels)
    s = float(spacing_mm)
    if n < 1 or s <= 0:
        raise ConfigError(f"Crop size {n} voxels at {s} mm is not a valid cube.",
                          hint="set size_voxels >= 1 and spacing_mm > 0 in conf/crops.yaml.")
    centre = np.asarray(centre_lps, dtype=np.float64)
    direction = np.asarray(image.direction, dtype=np.float64)
    # unit directions of the source axes (spacing removed), so the cube is isotropic in mm
    origin = centre - direction @ np.full(3, (n - 1) / 2.0 * s)
    crop_geom = ImageData(np.zeros((1, 1, 1), np.float32), (s, s, s), tuple(origin), direction)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    src = world_to_voxel(image, voxel_to_world(crop_geom, grid))
    outside = ~inside_volume(image, src)
    arr = np.asarray(image.array, dtype=np.float32)
    values = ndimage.map_coordinates(arr, src.T, order=order, mode="nearest", prefilter=False)
    values[outside] = float(pad_value)
    cube = values.reshape(n, n, n).astype(np.float32)
    if np.issubdtype(image.array.dtype, np.integer):
        cube = np.round(cube).astype(np.int16)
    meta = {"modality": image.meta.get("modality", "CT"), "source": "medeff crops"}
    return ImageData(cube, (s, s, s), tuple(origin), direction, meta), float(outside.mean())


# ---- inputs ------------------------------------------------------------------------------------------------------
def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise InputError(f"Positions CSV '{path}' does not exist.", hint="check the path.", path=str(path))
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            cols = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"Cannot read positions CSV '{path}' ({exc}).", hint="give a comma-separated UTF-8 file.",
                         path=str(path)) from exc
    if not rows:
        raise InputError(f"Positions CSV '{path}' has no rows.", hint="add one row per nodule/tumour.",
                         path=str(path))
    return cols, rows


def _require(cols: list[str], needed: Mapping[str, str], path: Path) -> None:
    missing = [f"'{col}' ({key})" for key, col in needed.items() if col not in cols]
    if missing:
        raise InputError(f"Positions CSV '{path}' lacks column(s) {', '.join(missing)}; its columns are {cols}.",
                         hint="rename the columns or set columns.<key>=<name> (conf/crops.yaml).", path=str(path))


def _number(row: dict[str, str], col: str, line: int, path: Path) -> float:
    raw = (row.get(col) or "").strip()
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not np.isfinite(v):
        raise InputError(f"Positions CSV '{path}' row {line}: column '{col}' holds {raw!r}, not a number.",
                         hint="give world coordinates in mm (LPS) as plain numbers.", path=str(path))
    return v


def _label(raw: str, label_map: Mapping[str, str], class_names: Sequence[str], line: int, path: Path) -> str | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    name = str(label_map.get(raw, raw))
    if class_names and name not in class_names:
        raise InputError(f"Positions CSV '{path}' row {line}: label {raw!r} is not one of the classes "
                         f"{list(class_names)}.",
                         hint=f"fix the label, or map it to a class with 'label_map={{{raw}: <class>}}'.",
                         path=str(path))
    return name


def resolve_under_root(name: str, root: Path, *, allow_outside: bool, line: int, column: str, csv_path: Path) -> Path:
    """The file or folder a CSV cell names (relative to ``root``, or absolute), refused unless it lies under
    ``root`` once ``..`` parts and symbolic links are followed (``os.path.realpath``; ``allow_outside`` lifts this).

    Raises:
        InputError: the path leads outside ``root`` (naming the row, the column and the option).
    """
    full = Path(name) if Path(name).is_absolute() else root / name
    if allow_outside:
        return full
    real_root = os.path.realpath(root)
    real = os.path.realpath(full)
    if os.path.commonpath([real, real_root]) != real_root:
        raise InputError(f"CSV '{csv_path}' row {line}: column '{column}' names {name!r}, which lies outside the data "
                         f"root '{root}' (once '..' parts and symbolic links are followed); nothing was read.",
                         hint="put the series under the root and name them relative to it (root=FOLDER; default: "
                         "the CSV's folder), or set allow_outside_root=true if this CSV is trusted.",
                         path=str(csv_path))
    return full


def read_targets(path: str | os.PathLike, cfg: Any) -> list[CropTarget]:
    """Rows of a world-position CSV (``input_format=world``): series, x/y/z in LPS mm, optional size and label.

    Raises:
        InputError: missing columns, non-numeric coordinates, unknown labels (naming the row and file).
    """
    path = Path(path)
    cols, rows = _read_csv(path)
    cc = cfg.columns
    _require(cols, {"series": cc.series, "x": cc.x, "y": cc.y, "z": cc.z}, path)
    size_col = cc.get("size") if cc.get("size") in cols else None
    label_col = cc.get("label") if cc.get("label") in cols else None
    group_col = cc.get("group") if cc.get("group") in cols else None
    label_map = dict(cfg.get("label_map") or {})
    class_names = [str(c) for c in cfg.get("class_names") or []]
    out = []
    for n, row in enumerate(rows):
        line = n + 2
        series = (row.get(cc.series) or "").strip()
        if not series:
            raise InputError(f"Positions CSV '{path}' row {line}: column '{cc.series}' is empty.",
                             hint="name the DICOM folder or image file of every row.", path=str(path))
        centre = np.array([_number(row, cc[a], line, path) for a in ("x", "y", "z")])
        edge = None
        if size_col and (row.get(size_col) or "").strip():
            edge = _number(row, size_col, line, path)
            if edge <= 0:
                raise InputError(f"Positions CSV '{path}' row {line}: size {edge} mm is not positive.",
                                 hint="give the cube edge in mm, or leave the cell empty.", path=str(path))
        label = _label(row.get(label_col, ""), label_map, class_names, line, path) if label_col else None
        group = (row.get(group_col) or "").strip() or None if group_col else None
        out.append(CropTarget(line, series, centre, edge, label, group))
    return out


def read_box_targets(path: str | os.PathLike, cfg: Any, root: Path) -> list[CropTarget]:
    """Per-slice pixel boxes (``input_format=pixel_boxes``) -> one target per tumour (consecutive slices of a series).

    The centre of each box (column, row) on its DICOM file is mapped to world LPS with that file's
    ImagePositionPatient, ImageOrientationPatient and PixelSpacing. Boxes of one series whose slices lie at most
    ``boxes.max_gap_mm`` apart along the slice normal form one tumour; its centre is the middle of the boxes' world
    extent and its edge ``boxes.margin`` times the largest extent (at least ``boxes.min_edge_mm``).
    Rows without a file (boxes on series that are not present) are skipped and counted in the log.

    Raises:
        InputError: missing columns, unreadable or missing files, non-numeric boxes (naming the row and file).
    """
    import pydicom

    path = Path(path)
    cols, rows = _read_csv(path)
    bc = cfg.boxes
    _require(cols, {"file": bc.file, "xmin": bc.xmin, "ymin": bc.ymin, "xmax": bc.xmax, "ymax": bc.ymax}, path)
    label_col = cfg.columns.get("label") if cfg.columns.get("label") in cols else None
    label_map = dict(cfg.get("label_map") or {})
    class_names = [str(c) for c in cfg.get("class_names") or []]
    per_series: dict[str, list[tuple[int, np.ndarray, np.ndarray, float, str | None]]] = {}
    skipped = 0
    for n, row in enumerate(rows):
        line = n + 2
        rel = (row.get(bc.file) or "").strip()
        if not rel:
            skipped += 1
            continue
        f = resolve_under_root(rel, root, allow_outside=bool(cfg.get("allow_outside_root", False)), line=line,
                               column=str(bc.file), csv_path=path)
        if not f.is_file():
            raise InputError(f"Boxes CSV '{path}' row {line}: the DICOM file named in column '{bc.file}' does not "
                             "exist under the data root.", hint="check the root (root=FOLDER) and the file column.",
                             path=str(path))
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
            ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            ps = [float(v) for v in ds.PixelSpacing]  # row spacing (between rows), column spacing
        except Exception as exc:  # noqa: BLE001 - any header problem becomes an error naming the row
            raise InputError(f"Boxes CSV '{path}' row {line}: the DICOM file lacks a usable geometry "
                             f"({type(exc).__name__}).", hint="point the row at an image slice of the series.",
                             path=str(path)) from exc
        row_dir, col_dir = iop[:3], iop[3:]
        corners = []
        for cx, cy in ((bc.xmin, bc.ymin), (bc.xmax, bc.ymax)):
            c, r = _number(row, cx, line, path), _number(row, cy, line, path)
            corners.append(ipp + c * ps[1] * row_dir + r * ps[0] * col_dir)
        normal = np.cross(row_dir, col_dir)
        label = _label(row.get(label_col, ""), label_map, class_names, line, path) if label_col else None
        per_series.setdefault(str(f.parent), []).append((line, corners[0], corners[1], float(ipp @ normal), label))
    if skipped:
        log.info("Boxes CSV: %d row(s) without a DICOM file were skipped (boxes on series not present).", skipped)
    if not per_series:
        raise InputError(f"Boxes CSV '{path}' has no row with a DICOM file.", hint=f"fill column '{bc.file}'.",
                         path=str(path))
    out = []
    gap = float(bc.max_gap_mm)
    for folder, boxes in per_series.items():
        boxes.sort(key=lambda b: b[3])
        groups, cur = [], [boxes[0]]
        for b in boxes[1:]:
            if b[3] - cur[-1][3] > gap:
                groups.append(cur)
                cur = []
            cur.append(b)
        groups.append(cur)
        for g in groups:
            pts = np.vstack([p for b in g for p in (b[1], b[2])])
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            labels = {b[4] for b in g}
            if len(labels) > 1:
                raise InputError(f"Boxes CSV '{path}' rows {[b[0] for b in g]}: one tumour carries several labels "
                                 f"{sorted(str(x) for x in labels)}.", hint="give the boxes of a tumour one label.",
                                 path=str(path))
            extent = tuple(float(v) for v in hi - lo)
            edge = max(float(bc.min_edge_mm), float(bc.margin) * max(extent))
            out.append(CropTarget(g[0][0], folder, (lo + hi) / 2.0, edge, labels.pop(), None, extent,
                                  {"n_boxes": len(g)}))
    return sorted(out, key=lambda t: t.row)


# ---- the whole job -----------------------------------------------------------------------------------------------
def extract_crops(positions: str | os.PathLike, out_dir: str | os.PathLike, cfg: Any = None, *,
                  overrides: Sequence[str] = ()) -> Path:
    """Cut one crop per row of ``positions`` and write the crops and their manifest under ``out_dir``.

    Args:
        positions: the positions CSV (``input_format=world``) or per-slice boxes CSV (``pixel_boxes``).
        out_dir: output folder (``crops/`` and ``crops.csv`` are written there).
        cfg: the composed ``crops`` config, or None (``conf/crops.yaml`` with ``overrides``).
        overrides: Hydra overrides applied when ``cfg`` is None.

    Returns:
        Path of the manifest ``crops.csv``.

    Raises:
        InputError: a bad CSV, an unknown series, or a position outside its volume (naming the row and file).
        OutputExistsError: outputs exist and ``overwrite`` is false.
    """
    from medeff.data.crop_limits import available_memory, check_crop_extent, check_crop_sizes
    from medeff.errors import MedeffError
    from medeff.io import read_image, write_image
    from medeff.utils.atomic import check_writable, write_text_atomic
    from medeff.utils.options import look_up
    from medeff.utils.pseudonyms import Pseudonymiser

    cfg = cfg if cfg is not None else crops_config(overrides)
    positions = Path(positions)
    out = Path(out_dir)
    overwrite = bool(cfg.overwrite)
    manifest = out / "crops.csv"
    check_writable(manifest, overwrite=overwrite)
    root = Path(str(cfg.root)) if cfg.get("root") else positions.parent
    fmt = look_up(str(cfg.input_format), ("world", "pixel_boxes"), what="input format", key="input_format")
    targets = read_targets(positions, cfg) if fmt == "world" else read_box_targets(positions, cfg, root)
    labelled = [t.label is not None for t in targets]
    if any(labelled) and not all(labelled):
        rows = [t.row for t in targets if t.label is None][:10]
        raise InputError(f"Positions CSV '{positions}': rows {rows} have no label while others have one.",
                         hint="label every row, or none (an unlabelled set is predicted and listed, not scored).",
                         path=str(positions))
    n_vox, spacing, pad = int(cfg.size_voxels), float(cfg.spacing_mm), float(cfg.pad_hu)
    pseudo = Pseudonymiser(None if cfg.get("pseudonym_salt") is None else str(cfg.pseudonym_salt),
                           prefix=str(cfg.group_prefix))
    if not np.isfinite(spacing) or spacing <= 0:
        raise ConfigError(f"spacing_mm={spacing} is not a positive spacing.", hint="set spacing_mm, e.g. 1.0.")
    edges = [n_vox if t.edge_mm is None else max(1, int(round(t.edge_mm / spacing))) for t in targets]
    check_crop_sizes(targets, edges, spacing, cfg, fmt, positions, available_memory())  # before reading anything
    series_names: dict[str, str] = {}
    keys = []
    allow_outside = bool(cfg.get("allow_outside_root", False))
    for t in targets:  # every series must be under the root and exist before anything is read or written
        spath = Path(t.series) if Path(t.series).is_absolute() else root / t.series
        if fmt == "world":  # pixel-box files were checked as they were read
            spath = resolve_under_root(t.series, root, allow_outside=allow_outside, line=t.row,
                                       column=str(cfg.columns.series), csv_path=positions)
        if not spath.exists():
            raise InputError(f"Positions CSV '{positions}' row {t.row}: series '{t.series}' does not exist "
                             f"under '{root}'.", hint="check the series column and root=FOLDER (series paths "
                             "are relative to the CSV's folder by default).", path=str(positions))
        keys.append(str(spath))
        series_names.setdefault(str(spath), f"series_{len(series_names) + 1:02d}")
    results: dict[int, tuple[ImageData, dict[str, Any]]] = {}
    image: ImageData | None = None
    current = None
    for i in track(sorted(range(len(targets)), key=lambda j: (keys[j], j)), "Cutting crops"):  # one series at a time
        t, key = targets[i], keys[i]
        if key != current:
            try:
                image = read_image(key)
            except MedeffError as exc:
                raise InputError(f"Positions CSV '{positions}' row {t.row}: its series cannot be read "
                                 f"({exc.message})", hint=exc.hint or "check the series.",
                                 path=str(positions)) from exc
            current = key
        if image.ndim != 3:
            raise InputError(f"Positions CSV '{positions}' row {t.row}: its series is {image.ndim}D; crops need 3D.",
                             hint="point the row at a 3D series.", path=str(positions))
        centre_idx = world_to_voxel(image, t.centre_lps)
        if not inside_volume(image, centre_idx)[0]:
            extent_lo = voxel_to_world(image, np.zeros(3))
            extent_hi = voxel_to_world(image, np.asarray(image.array.shape[:3], float) - 1)
            raise InputError(
                f"Positions CSV '{positions}' row {t.row}: position {np.round(t.centre_lps, 1).tolist()} mm (LPS) "
                f"lies outside its series (voxel index {np.round(centre_idx, 1).tolist()}, volume "
                f"{list(image.array.shape[:3])}; corner voxels at {np.round(extent_lo, 1).tolist()} and "
                f"{np.round(extent_hi, 1).tolist()} mm).",
                hint="coordinates must be world LPS mm as in DICOM ImagePositionPatient; from RAS (3D Slicer) negate x "
                "and y. Check that the row names the right series.", path=str(positions))
        edge_vox = edges[i]
        check_crop_extent(t, edge_vox, spacing, image, cfg, fmt, positions)
        crop, padded = crop_cube(image, t.centre_lps, size_voxels=edge_vox, spacing_mm=spacing, pad_value=pad,
                                 order=int(cfg.interpolation_order))
        case_id = f"{cfg.case_prefix}{i + 1:04d}"
        group = pseudo(f"group:{t.group}") if t.group else pseudo(f"series:{key}")
        rec = {"case_id": case_id, "image": f"crops/{case_id}.nii.gz", "label": t.label or "", "patient_id": group,
               "source_row": t.row, "series": series_names[key], "x_mm": round(float(t.centre_lps[0]), 3),
               "y_mm": round(float(t.centre_lps[1]), 3), "z_mm": round(float(t.centre_lps[2]), 3),
               "voxel_i": round(float(centre_idx[0]), 2), "voxel_j": round(float(centre_idx[1]), 2),
               "voxel_k": round(float(centre_idx[2]), 2), "edge_mm": round(edge_vox * spacing, 3),
               "spacing_mm": spacing, "padded_fraction": round(padded, 6), "padded": int(padded > 0)}
        if t.extent_mm is not None:
            rec["extent_mm"] = round(max(t.extent_mm), 2)
        if padded > 0:
            log.info("%s (row %d): %.1f%% of the cube lay outside the volume and was padded with %g HU.",
                     case_id, t.row, 100 * padded, pad)
        results[i] = (crop, rec)
    rows_out = []
    for i in track(range(len(targets)), "Writing crops"):  # everything was checked: now write, in row order
        crop, rec = results[i]
        write_image(crop, out / rec["image"], overwrite=overwrite)
        rows_out.append(rec)
    if not any(labelled):  # an unlabelled set: no label column, so `medeff index` reads it as unlabelled
        for r in rows_out:
            r.pop("label")
    fields = list(dict.fromkeys(k for r in rows_out for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows_out)
    write_text_atomic(manifest, buf.getvalue(), overwrite=overwrite)
    log.info("Wrote %d crop(s) from %d series and %s.", len(rows_out), len(series_names), manifest)
    return manifest
