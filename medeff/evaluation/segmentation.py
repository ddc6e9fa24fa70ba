"""Segmentation evaluation: per case and per label metrics from mask files, aggregates with cluster-bootstrap CIs."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from medeff.errors import InputError
from medeff.evaluation.bootstrap import NON_NEGATIVE, UNIT, cluster_bootstrap, interval_method
from medeff.evaluation.masks import MAX_LABEL, binary_dice, masks_on_one_grid, read_mask
from medeff.evaluation.postprocess import report_record
from medeff.evaluation.privacy import evaluation_pseudonymiser
from medeff.evaluation.provenance import collect_provenance
from medeff.evaluation.surface import EmptyConventions, label_metrics
from medeff.evaluation.tables import metric_record, pseudonymise_ids, read_table, require_columns
from medeff.utils.logging import get_logger
from medeff.utils.progress import track

__all__ = ["evaluate_segmentation", "match_folders", "read_mask", "SEG_METRICS"]

log = get_logger(__name__)
_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")

# metric key -> (plain label, unit, digits)
SEG_METRICS: dict[str, tuple[str, str, int]] = {
    "dice": ("Dice similarity coefficient", "", 3),
    "iou": ("Intersection over union (Jaccard)", "", 3),
    "hd95": ("95th-percentile Hausdorff distance", "mm", 2),
    "assd": ("Average symmetric surface distance", "mm", 2),
    "nsd": ("Normalised surface Dice", "", 3),
    "volume_ref_ml": ("Reference volume", "ml", 2),
    "volume_pred_ml": ("Predicted volume", "ml", 2),
    "volume_error_ml": ("Volume error (predicted - reference)", "ml", 2),
    "volume_error_rel": ("Relative volume error", "", 3),
}

# range of each metric's mean: its bootstrap interval is clipped to it (recorded); volume errors are unbounded
_BOUNDS = {"dice": UNIT, "iou": UNIT, "nsd": UNIT, "hd95": NON_NEGATIVE, "assd": NON_NEGATIVE,
           "volume_ref_ml": NON_NEGATIVE, "volume_pred_ml": NON_NEGATIVE, "volume_error_rel": (-1.0, np.inf)}


def _stem(name: str) -> str | None:
    for suf in _SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return None


def match_folders(pred_dir: str | Path, ref_dir: str | Path) -> pd.DataFrame:
    """Pair prediction and reference masks with the same file name (any of .nii.gz, .nii, .nrrd, .mha, .mhd, and
    .dcm for DICOM SEG).

    Raises:
        InputError: a folder is missing, or files are present in one folder only.
    """
    found = {}
    for role, folder in (("prediction", Path(pred_dir)), ("reference", Path(ref_dir))):
        if not folder.is_dir():
            raise InputError(f"The {role} folder '{folder}' does not exist.", hint="check the folder in the config.",
                             path=str(folder))
        found[role] = {_stem(p.name): p for p in sorted(folder.iterdir()) if _stem(p.name)}
    only_p = set(found["prediction"]) - set(found["reference"])
    only_r = set(found["reference"]) - set(found["prediction"])
    if only_p or only_r:
        raise InputError(f"Prediction folder '{pred_dir}' and reference folder '{ref_dir}' do not match: "
                         f"{len(only_p)} prediction file(s) without a reference, {len(only_r)} reference file(s) "
                         "without a prediction.", hint="give every case one file of the same name in both folders.")
    if not found["reference"]:
        raise InputError(f"No mask files (.nii.gz, .nii, .nrrd, .mha, .mhd, .dcm) in '{ref_dir}'.", path=str(ref_dir))
    names = sorted(found["reference"])
    return pd.DataFrame({"case_id": names, "prediction": [str(found["prediction"][n]) for n in names],
                         "reference": [str(found["reference"][n]) for n in names]})


def _reorient_onto(ref: np.ndarray, aff_r: np.ndarray, shape: tuple, aff_p: np.ndarray, atol: float):
    """``ref`` on the prediction grid when it stores the same voxels in another axis order/direction, else None.

    Both affines are LPS (the convention of every mask read here), so the axis permutation and flips found are the
    ones the two headers describe; returns ``(array, flipped)`` where ``flipped`` says whether an axis was reversed.
    """
    import nibabel.orientations as nio

    if ref.ndim != 3 or len(shape) != 3:
        return None
    ornt = nio.ornt_transform(nio.io_orientation(aff_r), nio.io_orientation(aff_p))
    moved = nio.apply_orientation(ref, ornt)
    aff = aff_r @ nio.inv_ornt_aff(ornt, ref.shape)
    if moved.shape == tuple(shape) and np.allclose(aff, aff_p, atol=atol):
        return np.ascontiguousarray(moved), bool(np.any(ornt[:, 1] < 0))
    return None


def _mirror_axes(pred: np.ndarray, ref: np.ndarray) -> tuple[tuple[int, ...], float, float] | None:
    """Array axes along which the reference matches the prediction far better reversed than as placed.

    Returns ``(axes, dice as placed, dice reversed)`` of the foreground (any label) or None. Only looked at when the
    foreground Dice is below 0.5, so ordinary cases cost one comparison.
    """
    fp, fr = pred > 0, ref > 0
    if not fp.any() or not fr.any():
        return None
    placed = binary_dice(fp, fr)
    if placed >= 0.5:
        return None
    combos = [c for n in range(1, fr.ndim + 1) for c in itertools.combinations(range(fr.ndim), n)]
    best = max(((axes, binary_dice(fp, np.flip(fr, axis=axes))) for axes in combos), key=lambda t: t[1])
    if best[1] >= 0.5 and best[1] >= 2.0 * placed + 0.25:
        return best[0], placed, best[1]
    return None


def _present_labels(arr: np.ndarray) -> np.ndarray:
    """Sorted non-zero label values of ``arr`` (values are checked to be at most MAX_LABEL when read)."""
    if arr.size == 0:
        return np.zeros(0, np.int64)
    counts = np.bincount(arr.ravel().astype(np.int64, copy=False), minlength=1)
    return np.flatnonzero(counts[1:]) + 1


def _boxes(arr: np.ndarray, labels: np.ndarray) -> dict[int, tuple]:
    """Bounding box of each label in ``labels`` (one pass over the volume on compact label indices)."""
    if not len(labels):
        return {}
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[labels] = np.arange(1, len(labels) + 1, dtype=np.int32)
    found = ndimage.find_objects(lut[arr])
    return {int(lab): found[i] for i, lab in enumerate(labels) if i < len(found) and found[i] is not None}


def _case_metrics(job: tuple) -> list[dict]:
    pred_path, ref_path, labels, tol, conventions, geometry_atol = job[:6]
    reference_remap, reorient = (job[6], job[7]) if len(job) > 6 else ({}, False)
    where = f"Prediction '{pred_path}' / reference '{ref_path}'"
    pred_img, ref_img = masks_on_one_grid(read_mask(pred_path), read_mask(ref_path), where)
    pred, ref = pred_img.array, ref_img.array
    sp_p, sp_r = pred_img.spacing, ref_img.spacing
    aff_p, aff_r = pred_img.affine_lps, ref_img.affine_lps
    if reference_remap:
        from medeff.data.label_remap import remap_labels

        ref = remap_labels(ref, reference_remap)
    flipped = False
    if reorient and (pred.shape != ref.shape or not np.allclose(aff_p, aff_r, atol=geometry_atol)):
        moved = _reorient_onto(ref, aff_r, pred.shape, aff_p, geometry_atol)
        if moved is not None:  # same voxels stored in another axis order/direction (e.g. LAS vs LPS): lossless
            log.info("Reference '%s' reoriented onto the prediction grid (axis order/direction only).",
                     Path(ref_path).name)
            (ref, flipped), sp_r, aff_r = moved, sp_p, aff_p
    if pred.shape != ref.shape:
        raise InputError(f"Prediction '{pred_path}' has shape {pred.shape} but reference '{ref_path}' has {ref.shape}.",
                         hint="resample the prediction onto the reference grid before evaluating.")
    if not np.allclose(aff_p, aff_r, atol=geometry_atol):
        raise InputError(f"Prediction '{pred_path}' and reference '{ref_path}' have different geometry "
                         f"(spacing {sp_p} vs {sp_r}, origin {_mm(pred_img.origin)} vs {_mm(ref_img.origin)} mm LPS, "
                         "or directions differ).",
                         hint="resample the prediction onto the reference grid, or raise geometry_tolerance_mm; a "
                         "reference storing the same voxels in another axis order is aligned with "
                         "reorient_reference=true.")
    mirror = _mirror_axes(pred, ref)
    if mirror is not None:
        axes, placed, mirrored = mirror
        text = (f"Reference '{ref_path}' matches prediction '{pred_path}' far better mirrored along array "
                f"axis {_axes(axes)} "
                f"(foreground Dice {mirrored:.2f}) than as its header places it (foreground Dice {placed:.2f})")
        if flipped:
            raise InputError(text + "; reorient_reference reversed that axis because the two headers say so, so one "
                             "of the headers is probably wrong (e.g. an LPS affine stored as a NIfTI RAS affine).",
                             hint="fix the header (direction/affine) of the mask written by the other tool; with "
                             "correct headers the masks match without mirroring.")
        log.warning("%s; one of the masks is probably mirrored (a header or an export step). Scored as placed.",
                    text)
    present = np.union1d(_present_labels(pred), _present_labels(ref))
    use = list(labels) if labels else [int(v) for v in present]
    wanted = np.asarray([v for v in use if 0 < v <= MAX_LABEL], dtype=np.int64)
    boxes_p = _boxes(pred, np.intersect1d(wanted, _present_labels(pred)))
    boxes_r = _boxes(ref, np.intersect1d(wanted, _present_labels(ref)))
    rows = []
    for lab in use:
        bp, br = boxes_p.get(int(lab)), boxes_r.get(int(lab))
        if bp is None and br is None:
            box = tuple(slice(0, 1) for _ in ref.shape)
        else:
            both = [b for b in (bp, br) if b is not None]
            box = tuple(slice(max(min(b[d].start for b in both) - 1, 0), min(max(b[d].stop for b in both) + 1, n))
                        for d, n in enumerate(ref.shape))
        p_box, r_box = (pred[box] == lab, ref[box] == lab) if (bp or br) else (np.zeros(1, bool), np.zeros(1, bool))
        m = label_metrics(p_box, r_box, sp_r, tolerance_mm=tol, conventions=conventions, image_shape=ref.shape)
        m["label"] = int(lab)
        if mirror is not None:
            m["warning"] = (f"the reference matches the prediction far better mirrored along array axis "
                            f"{_axes(mirror[0])} "
                            f"(foreground Dice {mirror[2]:.2f}) than as placed ({mirror[1]:.2f}): one of the masks "
                            "is probably mirrored; scored as placed")
        rows.append(m)
    return rows


def _label_value(value, key: str, allow_zero: bool = False) -> int:
    """A configured label value as int, refused unless it is an integer in 1..MAX_LABEL (0 too with allow_zero)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    low = 0 if allow_zero else 1
    if not (np.isfinite(number) and number == int(number) and low <= number <= MAX_LABEL):
        raise InputError(f"{key}: label value {value!r} is not an integer from {low} to {MAX_LABEL}.",
                         hint=f"give label values as the integers stored in the masks ({low}..{MAX_LABEL}).")
    return int(number)


def _axes(axes: tuple[int, ...]) -> str:
    return " and ".join(str(a) for a in axes)


def _mm(values) -> tuple:
    return tuple(round(float(v), 3) for v in values)


def evaluate_segmentation(
    index: str | Path | pd.DataFrame | None = None,
    *,
    prediction_dir: str | Path | None = None,
    reference_dir: str | Path | None = None,
    columns: Mapping | None = None,
    labels: Mapping | Sequence[int] | None = None,
    tolerance_mm: float = 2.0,
    empty_both: str = "nan",
    one_empty_distance: str | float = "nan",
    geometry_tolerance_mm: float = 1e-3,
    num_workers: int = 1,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    bootstrap_method: str = "percentile",
    seed: int = 0,
    hash_group_ids: bool | str = True,
    hash_case_ids: bool | str = "auto",
    pseudonym_salt: str | None = None,
    worst_cases: int = 10,
    reference_remap: Mapping | None = None,
    reorient_reference: bool = False,
    postprocessing: str | Path | None = None,
    title: str = "Segmentation evaluation",
    config: Mapping | None = None,
) -> dict:
    """Evaluate prediction masks against reference masks, per case and per label.

    Args:
        index: CSV (or DataFrame) with a case id, a prediction path and a reference path per row (relative paths
            are taken from the CSV's folder); or None with ``prediction_dir``/``reference_dir`` matched by file name.
        columns: ``case``, ``prediction``, ``reference``, ``group`` (patient, optional) and ``image`` (optional: the
            image of each case, for overlays of the worst and the median case in the report) column names.
        labels: ``{value: name}`` or a list of label values; None evaluates every non-zero label present.
        tolerance_mm: normalised surface Dice tolerance.
        empty_both, one_empty_distance: conventions for empty masks (see :class:`EmptyConventions`).
        geometry_tolerance_mm: largest allowed difference of the two masks' affines.
        num_workers: processes reading and scoring cases.
        n_resamples, confidence, bootstrap_method, seed: cluster bootstrap settings.
        hash_group_ids, hash_case_ids, pseudonym_salt: pseudonymisation of ids in the outputs.
        worst_cases: how many lowest-Dice cases the report lists.
        reference_remap: ``{reference value: value in the predictions}`` applied to every reference mask; values not
            listed become background (e.g. the 7 organs a model was trained on, out of a 117-label reference).
        reorient_reference: align a reference that stores the prediction's voxels in another axis order or
            direction (e.g. a LAS NIfTI for an LPS DICOM grid) onto the prediction grid, losslessly (logged);
            any other geometry difference stays an error.
        postprocessing: the post-processing plan (``postprocessing.json``) or ``predictions.json`` of
            ``medeff predict`` whose post-processing the report lists; None: the ``predictions.json`` beside the
            first prediction mask, when there is one (:func:`medeff.evaluation.postprocess.report_record`).
        title: report title.
        config: configuration recorded in the provenance.

    Returns:
        JSON-ready results dict for :func:`medeff.evaluation.render_report`.

    Raises:
        InputError, ImageReadError: missing columns/files, unreadable masks, mismatched geometry.
    """
    columns = dict(columns or {})
    case_col = columns.get("case", "case_id")
    pred_col = columns.get("prediction", "prediction")
    ref_col = columns.get("reference", "reference")
    group_col = columns.get("group") or None
    image_col = columns.get("image") or None
    conventions = EmptyConventions(str(empty_both), one_empty_distance)
    inputs: dict = {}
    if index is not None:
        df, path = read_table(index, "segmentation index")
        where = f"Segmentation index '{path}'" if path else "Segmentation index"
        require_columns(df, [case_col, pred_col, ref_col, group_col, image_col], where)
        base = path.parent if path else Path.cwd()
        for c in (pred_col, ref_col, *([image_col] if image_col else [])):
            df[c] = [str(p if Path(p).is_absolute() else base / p) for p in df[c].astype(str)]
        if df[case_col].duplicated().any():
            raise InputError(f"{where}: {int(df[case_col].duplicated().sum())} duplicate case ids.",
                             hint="give each case one row.")
        inputs["index"] = path
    elif prediction_dir and reference_dir:
        df = match_folders(prediction_dir, reference_dir)
        case_col, pred_col, ref_col, group_col, image_col = "case_id", "prediction", "reference", None, None
    else:
        raise InputError("No segmentation input given.",
                         hint="set segmentation.index=<CSV of case id, prediction and reference paths>, or "
                         "segmentation.prediction_dir and segmentation.reference_dir (files matched by name).")
    label_names = {_label_value(k, "segmentation.labels"): str(v) for k, v in labels.items()} \
        if isinstance(labels, Mapping) else {}
    label_list = sorted(label_names) if label_names else (
        [_label_value(v, "segmentation.labels") for v in labels] if labels else None)
    from medeff.data.label_remap import parse_label_remap

    remap = parse_label_remap(reference_remap, "segmentation.reference_remap")
    for k, v in remap.items():
        _label_value(k, "segmentation.reference_remap", allow_zero=True)
        _label_value(v, "segmentation.reference_remap", allow_zero=True)
    jobs = [(p, r, label_list, float(tolerance_mm), conventions, float(geometry_tolerance_mm), remap,
             bool(reorient_reference)) for p, r in zip(df[pred_col], df[ref_col])]
    if num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(num_workers, os.cpu_count() or 1)) as ex:
            per_case = list(track(ex.map(_case_metrics, jobs, chunksize=max(1, len(jobs) // (8 * num_workers))),
                                  "Scoring cases", total=len(jobs)))
    else:
        per_case = [_case_metrics(j) for j in track(jobs, "Scoring cases")]

    pseudo = evaluation_pseudonymiser(pseudonym_salt)
    out_case, case_hashed = pseudonymise_ids(df[case_col], hash_case_ids, pseudo, "C")
    groups_raw = df[group_col] if group_col else df[case_col]
    out_group, group_hashed = pseudonymise_ids(groups_raw, hash_group_ids, pseudo, "P")
    all_labels = sorted({r["label"] for rows in per_case for r in rows})
    records = []
    for i, rows in enumerate(per_case):
        got = {r["label"]: r for r in rows}
        for lab in all_labels:  # a label absent from both masks of this case follows the both-empty convention
            r = got.get(lab) or {**label_metrics(np.zeros(1, bool), np.zeros(1, bool), (1.0,),
                                                 conventions=conventions), "label": lab}
            if lab not in got:
                r.update(volume_pred_ml=0.0, volume_ref_ml=0.0, volume_error_ml=0.0)
            records.append({"case": out_case.iloc[i], "group": out_group.iloc[i], "label": lab,
                            "label_name": label_names.get(lab, f"label {lab}"), "empty": r["empty"],
                            **{k: r[k] for k in SEG_METRICS}, "tp": r["tp"], "fp": r["fp"], "fn": r["fn"]})
    warnings = [f"Case {out_case.iloc[i]}: {rows[0]['warning']}." for i, rows in enumerate(per_case)
                if rows and rows[0].get("warning")]
    table = pd.DataFrame.from_records(records)
    groups = groups_raw.astype(str).to_numpy()
    aggregates = _aggregate(table, all_labels, label_names, groups, len(df), n_resamples, confidence,
                            bootstrap_method, seed)
    from medeff.evaluation.volume_agreement import volume_agreement

    agreement = volume_agreement(table, all_labels, label_names, dict(zip(out_case.to_numpy(), groups)),
                                 n_resamples=n_resamples, confidence=confidence, method=bootstrap_method, seed=seed)
    mean_dice = table.groupby("case", sort=False)["dice"].mean()
    worst = mean_dice.sort_values(na_position="first").head(worst_cases)
    worst_rows = []
    for case, md in worst.items():
        sub = table[table["case"] == case]
        worst_rows.append({"case": case, "mean_dice": None if pd.isna(md) else float(md),
                           "dice_per_label": {n: (None if pd.isna(d) else float(d))
                                              for n, d in zip(sub["label_name"], sub["dice"])}})
    overlays = _overlays(df, image_col, pred_col, ref_col, out_case, mean_dice, all_labels, remap) if image_col else []
    settings = {"tolerance_mm": float(tolerance_mm), "empty_both": conventions.both_empty,
                "reference_remap": {str(k): v for k, v in remap.items()} or None,
                "reorient_reference": bool(reorient_reference),
                "one_empty_distance": conventions.one_empty_distance, "confidence": confidence,
                "n_resamples": n_resamples, "bootstrap_method": bootstrap_method, "seed": seed,
                "case_ids_pseudonymised": case_hashed, "group_ids_pseudonymised": group_hashed,
                "pseudonyms_stable_across_runs": pseudo.stable}
    return {
        "kind": "segmentation", "title": title, "settings": settings,
        "provenance": collect_provenance(dict(config or {}), inputs, seed),
        "counts": {"cases": int(len(df)), "groups": int(len(np.unique(groups))), "labels": len(all_labels)},
        "labels": [{"value": lab, "name": label_names.get(lab, f"label {lab}")} for lab in all_labels],
        "aggregates": aggregates,
        "volume_agreement": agreement,
        "worst_cases": worst_rows,
        "overlays": overlays,
        "postprocessing": report_record(postprocessing, list(df[pred_col])),
        "warnings": warnings,
        "per_case": table.replace({np.nan: None}).to_dict(orient="records"),
    }


def _overlays(df, image_col, pred_col, ref_col, out_case, mean_dice, labels, remap) -> list[dict]:
    """Overlay images of the worst and the median case (see :mod:`medeff.evaluation.overlays`)."""
    from medeff.evaluation.overlays import choose_cases, overlay_record

    out = []
    position = {c: i for i, c in enumerate(out_case.to_numpy())}
    for which, case, dice in choose_cases(mean_dice.to_dict()):
        i = position[case]
        where = f"Overlay of the {which} case {case}"
        pred_img, ref_img = masks_on_one_grid(read_mask(df[pred_col].iloc[i]), read_mask(df[ref_col].iloc[i]), where)
        ref = ref_img.array
        if remap:
            from medeff.data.label_remap import remap_labels

            ref = remap_labels(ref, remap)
        if ref.shape != pred_img.array.shape:
            log.warning("%s left out: reference and prediction arrays differ in shape.", where)
            continue
        rec = overlay_record(which, str(case), dice, df[image_col].iloc[i], pred_img.array, ref, labels)
        if rec:
            out.append(rec)
    return out


def _aggregate(table: pd.DataFrame, labels, label_names, groups, n_cases, n_resamples, confidence, method,
               seed) -> list[dict]:
    """Mean (cluster-bootstrap CI), median and IQR of each metric per label; NaN values are excluded and counted."""
    keys = list(SEG_METRICS)
    cols = []
    for lab in labels:
        sub = table[table["label"] == lab]
        for k in keys:
            cols.append(sub[k].to_numpy(float))
    values = np.vstack(cols).T if cols else np.zeros((n_cases, 0))  # (n_cases, labels * metrics), case order kept
    valid = np.isfinite(values)
    v0 = np.where(valid, values, 0.0)

    def stat(w):
        with np.errstate(invalid="ignore", divide="ignore"):
            return ((w @ v0) / (w @ valid.astype(float))).T

    bounds = [_BOUNDS.get(k) for _ in labels for k in keys]
    boot = cluster_bootstrap(stat, groups, n_resamples=n_resamples, confidence=confidence, method=method, seed=seed,
                             bounds=bounds)
    out = []
    j = 0
    for lab in labels:
        mets = []
        for k in keys:
            col = values[:, j]
            ok = col[np.isfinite(col)]
            label, unit, digits = SEG_METRICS[k]
            text, extra = interval_method(boot, j)
            mets.append(metric_record(k, label, boot["estimate"][j] if len(ok) else None, boot["low"][j],
                                      boot["high"][j], text, n=int(len(ok)), unit=unit, **extra,
                                      n_excluded=int(len(col) - len(ok)),
                                      median=float(np.median(ok)) if len(ok) else None,
                                      q1=float(np.quantile(ok, 0.25)) if len(ok) else None,
                                      q3=float(np.quantile(ok, 0.75)) if len(ok) else None, digits=digits))
            j += 1
        out.append({"label": lab, "name": label_names.get(lab, f"label {lab}"), "metrics": mets})
    return out
