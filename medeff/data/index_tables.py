"""Scanners of table-like sources: a CSV manifest (one row per case) and an array archive (``.npz`` of slices).

Like the other scanners (:mod:`medeff.data.index_sources`), they return raw cases whose group keys are still the
source's own; the index builder replaces them with pseudonyms before anything is written or logged.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medeff.data.index_images import load_archive_array
from medeff.data.index_sources import (IDENTIFIER_COLUMNS, IMAGE_SUFFIXES, UNKNOWN_LABEL_FIX, RawCase, Scan,
                                       _channel_names, _group_from, _inside, _rel)
from medeff.data.index_types import ArchiveRef
from medeff.errors import ConfigError, InputError
from medeff.utils.logging import get_logger

__all__ = ["scan_csv", "scan_archive", "declared_class_names", "class_spellings"]

log = get_logger(__name__)


def _read_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"Cannot read CSV '{path}': {exc}.", hint="check that it is a comma-separated file.",
                         path=str(path)) from exc


def _metadata_columns(columns: list[str], explicit: Any, used: set[str], where: str) -> list[str]:
    if explicit is not None:
        missing = [c for c in explicit if c not in columns]
        if missing:
            raise ConfigError(f"Metadata column(s) {missing} are not in '{where}' (columns: {columns}).",
                              hint="fix the metadata_columns list.")
        cols = list(explicit)
    else:
        cols = [c for c in columns if c not in used]
    dropped = [c for c in cols if re.search(IDENTIFIER_COLUMNS, c)]
    if dropped:
        log.info("Not copying identifier-like column(s) %s of %s into case metadata.", dropped, where)
    return [c for c in cols if c not in dropped]


def _as_number(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def declared_class_names(cfg: Any) -> list[str]:
    """``class_names`` of the config, spaces around each name removed.

    Raises:
        ConfigError: two names differ only in upper/lower case (class values are matched ignoring case).
    """
    names = [str(c).strip() for c in cfg.get("class_names") or []]
    folded = [n.casefold() for n in names]
    dup = sorted({n for n, f in zip(names, folded) if folded.count(f) > 1})
    if dup:
        raise ConfigError(f"class_names {dup} differ only in upper/lower case; class values are matched to class "
                          "names ignoring case, so these classes cannot be told apart.",
                          hint="give the classes names that differ in more than case (class_names=[...]).")
    return names


def class_spellings(cells: list[str], declared: list[str], where: str) -> dict[str, str]:
    """Map each class value as written (spaces around it removed) to the class it names, ignoring upper/lower case.

    With ``declared`` class names a value takes the declared spelling; otherwise spellings that differ only in case
    ("Benign", "benign") are one class, written as the most frequent spelling (ties: the first in sorted order), as
    ``medeff evaluate`` merges reference labels. Removed spaces and merged spellings are logged. Empty cells are left
    out.
    """
    spaced = [c for c in cells if c.strip() and c != c.strip()]
    if spaced:
        log.info("%s: removed spaces around %d class value(s) (e.g. %r -> %r).", where, len(spaced), spaced[0],
                 spaced[0].strip())
    counts = Counter(c.strip() for c in cells if c.strip())
    if declared:
        lookup = {d.casefold(): d for d in declared}
        out = {v: lookup.get(v.casefold(), v) for v in counts}
    else:
        groups: dict[str, list[str]] = {}
        for v in sorted(counts, key=lambda v: (-counts[v], v)):
            groups.setdefault(v.casefold(), []).append(v)
        out = {v: spellings[0] for spellings in groups.values() for v in spellings}
    changed = sorted(v for v, c in out.items() if v != c)
    if changed:
        log.warning("%s: class values that differ only in upper/lower case are one class: %s.", where,
                    "; ".join(f"{v!r} ({counts[v]} row(s)) -> {out[v]!r}" for v in changed))
    return out


def scan_csv(source: Path, cfg: Any) -> Scan:
    """A CSV manifest: image path(s), label map path or class, group id, extra metadata columns."""
    cc = cfg.csv
    df = _read_csv(source)
    cols = list(df.columns)
    for key in ("image_col", "group_col"):
        if cc[key] not in cols:
            raise ConfigError(f"CSV '{source}' has no column '{cc[key]}' (csv.{key}); its columns are {cols}.",
                              hint=f"set csv.{key}=<column> to the right column name.")
    label_col = cc.label_col if cc.get("label_col") in cols else None
    series_col = cc.series_col if cc.get("series_col") in cols else None
    base = source.parent
    sep = str(cc.separator)
    kind = str(cc.label_kind)
    if label_col is None:
        kind = "none"
    elif kind == "auto":
        vals = [v for v in df[label_col] if v.strip()]
        kind = "map" if vals and all(v.strip().lower().endswith(IMAGE_SUFFIXES) for v in vals) else "class"
    fold_col = cc.get("fold_col") if cc.get("fold_col") in cols else None
    if cc.get("fold_col") and fold_col is None:
        raise ConfigError(f"CSV '{source}' has no column '{cc.fold_col}' (csv.fold_col); its columns are {cols}.",
                          hint="add the fold column, or set csv.fold_col=null to draw the folds.")
    used = {cc.image_col, cc.group_col} | {c for c in (label_col, series_col, fold_col) if c}
    meta_cols = _metadata_columns(cols, cc.get("metadata_columns"), used, str(source))
    class_names = declared_class_names(cfg)
    declared = bool(class_names)
    canonical: dict[str, str] = {}
    if kind == "class":
        canonical = class_spellings(list(df[label_col]), class_names, f"CSV '{source}' column '{label_col}'")
    raw_classes = sorted(set(canonical.values()))
    if kind == "class" and not class_names:
        # a negative integer (-1 often marks "unknown") is never a class found in the data: its rows are refused
        found = [v for v in raw_classes if not re.fullmatch(r"-\d+", v.strip())]
        if found and all(re.fullmatch(r"\d+", v) for v in found):
            class_names = [str(i) for i in range(max(int(v) for v in found) + 1)]
        else:
            class_names = found
    problems = []
    cases = []
    allow_outside = bool(cc.get("allow_outside_root", False))
    for row_no, row in df.iterrows():
        ref = f"row {row_no + 2}"
        images = [s.strip() for s in str(row[cc.image_col]).split(sep) if s.strip()]
        image_rel = [_rel(Path(p) if Path(p).is_absolute() else base / p, base) for p in images]
        if not images:
            problems.append((ref, str(source), "has an empty image cell", f"fill column '{cc.image_col}'"))
            continue
        lv_path = str(row[label_col]).strip() if label_col and kind == "map" else ""
        outside = [p for p in images + ([lv_path] if lv_path else []) if not allow_outside and not _inside(p, base)]
        if outside:
            problems.append((ref, str(source), f"refers to {outside[0]!r}, outside the manifest's folder '{base}' "
                             "(once '..' parts and symbolic links are followed)",
                             "move the files under the manifest's folder and use relative paths, or set "
                             "csv.allow_outside_root=true if this manifest is trusted"))
            continue
        label: str | int | None = None
        lv = str(row[label_col]).strip() if label_col else ""
        if kind == "map":
            if lv:
                label = _rel(Path(lv) if Path(lv).is_absolute() else base / lv, base)
            else:
                problems.append((ref, images[0], "has no label map", f"fill column '{label_col}' or drop the row"))
        elif kind == "class":
            lv = canonical.get(lv, lv)
            if lv in class_names:
                label = class_names.index(lv)
            elif re.fullmatch(r"\d+", lv) and int(lv) < len(class_names):
                label = int(lv)
            else:
                problems.append((ref, images[0], f"has class {lv!r} in column '{label_col}', not one of the "
                                 f"classes {class_names}{' (class_names)' if declared else ''}",
                                 UNKNOWN_LABEL_FIX.format(unset="csv.label_col=null", what="rows")
                                 + ", or list every class in class_names"))
                continue  # one problem per row (the case is not indexed)
        group = str(row[cc.group_col]).strip()
        if not group:
            problems.append((ref, images[0], f"has an empty group cell ('{cc.group_col}')",
                             "give every row its patient/group id"))
        meta = {c: _as_number(str(row[c])) for c in meta_cols if str(row[c]) != ""}
        fold = None
        if fold_col:
            fv = str(row[fold_col]).strip()
            if not re.fullmatch(r"\d+", fv):
                problems.append((ref, images[0], f"has fold {fv!r} in column '{fold_col}', not a fold number",
                                 "give every row a fold 0..k-1"))
            else:
                fold = int(fv)
        cases.append(RawCase(image=image_rel, label=label, group_key=group, source_ref=ref,
                             series_uid=str(row[series_col]).strip() or None if series_col else None,
                             metadata=meta, identifiers=(group,), fold=fold))
    task = {"map": "segmentation", "class": "classification", "none": "unlabelled"}[kind]
    n_channels = max((len(c.image) for c in cases), default=1)
    return Scan("csv", base, task, cases, _channel_names(cfg, n_channels), class_names=class_names,
                problems=problems)


def _archive_labels(labels: np.ndarray, class_names: list[str], rel: str,
                    key: str) -> tuple[np.ndarray, np.ndarray, tuple[str, str, str, str] | None]:
    """Integer class per row, the rows whose label is not a declared class, and one problem naming them.

    A label is a class when it is a non-negative integer, below ``len(class_names)`` when classes are declared.
    Without declared classes, the largest value of an unsigned array (255 for uint8) is refused too: it is what -1
    becomes when stored unsigned.
    """
    arr = np.asarray(labels)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iuf":
        return (np.zeros(len(arr), np.int64), np.ones(len(arr), bool),
                ("-", rel, f"array '{key}' has dtype {arr.dtype}; classes must be integers 0, 1, ...",
                 "store the class of each row as an integer"))
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(arr) & (arr == np.round(arr))
        values = np.where(ok, arr, -1).astype(np.int64)
    else:
        ok = np.ones(len(arr), bool)
        values = arr.astype(np.int64)
    bad = ~ok | (values < 0)
    if class_names:
        bad |= values >= len(class_names)
    elif arr.dtype.kind == "u" and len(arr):
        bad |= values == np.iinfo(arr.dtype).max
    if not bad.any():
        return values, bad, None
    odd = arr[bad]
    shown: list = sorted({v for v in odd.tolist() if v == v})  # NaN != NaN: listed once below
    if arr.dtype.kind == "f" and np.isnan(odd).any():
        shown.append(float("nan"))
    rows = np.flatnonzero(bad)
    declared = (f"the declared classes are {class_names} (values 0..{len(class_names) - 1})" if class_names
                else "classes are the integers 0, 1, ... (no class_names declared)")
    fix = UNKNOWN_LABEL_FIX.format(unset="archive.labels_key=null", what="rows")
    if class_names:
        fix += ", or list every class in class_names"
    return values, bad, ("-", rel, f"array '{key}' holds label value(s) {shown[:10]} in {len(rows)} of {len(arr)} "
                         f"row(s) (rows {rows[:5].tolist()}{' ...' if len(rows) > 5 else ''}), which are not "
                         f"classes: {declared}", fix)


def scan_archive(source: Path, cfg: Any) -> Scan:
    """An ``.npz`` archive with one row per slice; rows sharing ``archive.case_key`` form one case."""
    ac = cfg.archive
    if source.is_dir():
        files = [Path(ac.file)] if ac.get("file") else sorted(source.glob("*.npz"))
        files = [f if f.is_absolute() else source / f.name for f in files]
        if len(files) != 1:
            raise InputError(f"Folder '{source}' holds {len(files)} .npz archives; expected one.",
                             hint="set archive.file=<name>.npz.", path=str(source))
        npz, root = files[0], source
    else:
        npz, root = source, source.parent
    images = load_archive_array(npz, str(ac.images_key))
    keys = load_archive_array(npz, str(ac.case_key)).astype(str)
    n = images.shape[0]
    order = load_archive_array(npz, str(ac.order_key)) if ac.get("order_key") else np.arange(n)
    labels = load_archive_array(npz, str(ac.labels_key)) if ac.get("labels_key") else None
    for name, arr in ((ac.case_key, keys), (ac.order_key, order), (ac.labels_key, labels)):
        if arr is not None and len(arr) != n:
            raise InputError(f"Archive '{npz}': array '{name}' has {len(arr)} rows but images has {n}.",
                             hint="the archive arrays must be aligned row by row.", path=str(npz))
    meta_rows = None
    meta_cols: list[str] = []
    if ac.get("metadata_csv") and (root / str(ac.metadata_csv)).is_file():
        mpath = root / str(ac.metadata_csv)
        df = _read_csv(mpath)
        if ac.get("metadata_row_col") and ac.metadata_row_col in df.columns:
            df = df.set_index(df[ac.metadata_row_col].astype(int)).sort_index()
        if len(df) != n or (ac.get("metadata_row_col") in df.columns and list(df.index) != list(range(n))):
            raise InputError(f"Metadata CSV '{mpath}' has {len(df)} rows; the archive has {n}.",
                             hint="the CSV must have one row per archive row (or unset archive.metadata_csv).",
                             path=str(mpath))
        check_cols = [str(c) for c in (ac.get("metadata_case_cols") or [])]
        if check_cols and all(c in df.columns for c in check_cols):
            joined = df[check_cols].astype(str).agg("/".join, axis=1).to_numpy()
            bad_rows = np.flatnonzero(joined != keys)
            if bad_rows.size:
                raise InputError(
                    f"Metadata CSV '{mpath}' is not aligned with the archive: {bad_rows.size} row(s) (first: "
                    f"{bad_rows[:5].tolist()}) have {'/'.join(check_cols)} different from the archive's "
                    f"'{ac.case_key}'.",
                    hint="set archive.metadata_row_col to the CSV column holding the archive row, or fix the CSV.",
                    path=str(mpath),
                )
        meta_cols = _metadata_columns(list(df.columns), ac.get("metadata_columns"), {str(ac.metadata_row_col)},
                                      str(mpath))
        # keep only columns that are constant within every case (per-case values, not per-row ones)
        per_case = df[meta_cols].groupby(keys, sort=False).nunique(dropna=False).max() if meta_cols else None
        meta_cols = [c for c in meta_cols if per_case is not None and int(per_case[c]) == 1]
        meta_rows = df
    meta_values = {c: meta_rows[c].to_numpy() for c in meta_cols} if meta_rows is not None else {}
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        rows_of[str(k)].append(i)
    class_names = declared_class_names(cfg)
    problems = []
    rel = _rel(npz, root)
    bad_rows = np.zeros(n, dtype=bool)
    if labels is not None:
        labels, bad_rows, problem = _archive_labels(labels, class_names, rel, str(ac.labels_key))
        if problem is not None:
            problems.append(problem)
        if not class_names:
            good = labels[~bad_rows]
            class_names = [str(i) for i in range(int(good.max()) + 1)] if good.size else []
    cases = []
    for key, rows in rows_of.items():
        rows = sorted(rows, key=lambda r: (order[r], r))
        label = None
        if bad_rows[rows].any():
            continue  # reported once for the whole archive (above)
        if labels is not None:
            vals = {int(labels[r]) for r in rows}
            if len(vals) > 1:
                problems.append((key, rel, f"rows {rows[:5]}... carry different labels {sorted(vals)}",
                                 "one case must have one class; fix the archive labels"))
            label = min(vals)
        meta: dict[str, Any] = {}
        for c, values in meta_values.items():
            v = str(values[rows[0]])
            if v != "":
                meta[c] = _as_number(v)
        meta["n_rows"] = len(rows)
        group = _group_from(ac.get("group_regex"), key, key)
        cases.append(RawCase(image=[], label=label, group_key=group, source_ref=key,
                             archive=ArchiveRef(rel, str(ac.images_key), tuple(rows)), metadata=meta,
                             identifiers=(group,)))
    task = "classification" if labels is not None else "unlabelled"
    return Scan("archive", root, task, cases, _channel_names(cfg, 1), class_names=class_names,
                spatial_dims=images.ndim - 1, problems=problems)
