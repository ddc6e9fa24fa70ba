"""Segmentation evaluation: per case and per label metrics from mask files, aggregates with cluster-bootstrap CIs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from medeff.errors import ImageReadError, InputError
from medeff.evaluation.bootstrap import cluster_bootstrap
from medeff.evaluation.privacy import Pseudonymiser
from medeff.evaluation.provenance import collect_provenance
from medeff.evaluation.surface import EmptyConventions, label_metrics
from medeff.evaluation.tables import metric_record, pseudonymise_ids, read_table, require_columns
from medeff.utils.logging import get_logger

__all__ = ["evaluate_segmentation", "match_folders", "read_mask", "SEG_METRICS"]

log = get_logger(__name__)
_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

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


def _stem(name: str) -> str | None:
    for suf in _SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return None


def match_folders(pred_dir: str | Path, ref_dir: str | Path) -> pd.DataFrame:
    """Pair prediction and reference masks with the same file name (any of .nii.gz, .nii, .nrrd, .mha, .mhd).

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
        raise InputError(f"No mask files (.nii.gz, .nii, .nrrd, .mha) in '{ref_dir}'.", path=str(ref_dir))
    names = sorted(found["reference"])
    return pd.DataFrame({"case_id": names, "prediction": [str(found["prediction"][n]) for n in names],
                         "reference": [str(found["reference"][n]) for n in names]})


def read_mask(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Read an integer label map; returns (array, spacing in mm per array axis, 4x4 affine)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"Mask file '{path}' does not exist.", hint="check the paths in the index.",
                             path=str(path))
    try:
        if path.name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            arr = np.asarray(img.dataobj)
            spacing = tuple(round(float(z), 6) for z in img.header.get_zooms()[: arr.ndim])  # float32 header
            affine = np.asarray(img.affine, float)
        else:
            import SimpleITK as sitk

            img = sitk.ReadImage(str(path))
            arr = sitk.GetArrayFromImage(img).transpose()
            spacing = tuple(float(s) for s in img.GetSpacing())
            affine = np.eye(4)
            affine[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(spacing)
            affine[:3, 3] = img.GetOrigin()
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a user-facing error naming the file
        raise ImageReadError(f"Mask file '{path}' cannot be read ({type(exc).__name__}: {exc}).",
                             hint="check that it is a valid NIfTI/NRRD/MHA label map.", path=str(path)) from exc
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ImageReadError(f"Mask file '{path}' holds non-integer or NaN values; a label map is expected.",
                                 hint="write masks as integer label maps (0 = background).", path=str(path))
    if not np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.int32)
    return arr, spacing, affine


def _reorient_onto(ref: np.ndarray, aff_r: np.ndarray, shape: tuple, aff_p: np.ndarray, atol: float):
    """``ref`` on the prediction grid when it stores the same voxels in another axis order/direction, else None."""
    import nibabel.orientations as nio

    if ref.ndim != 3 or len(shape) != 3:
        return None
    ornt = nio.ornt_transform(nio.io_orientation(aff_r), nio.io_orientation(aff_p))
    moved = nio.apply_orientation(ref, ornt)
    aff = aff_r @ nio.inv_ornt_aff(ornt, ref.shape)
    if moved.shape == tuple(shape) and np.allclose(aff, aff_p, atol=atol):
        return np.ascontiguousarray(moved)
    return None


def _case_metrics(job: tuple) -> list[dict]:
    pred_path, ref_path, labels, tol, conventions, geometry_atol = job[:6]
    reference_remap, reorient = (job[6], job[7]) if len(job) > 6 else ({}, False)
    pred, sp_p, aff_p = read_mask(pred_path)
    ref, sp_r, aff_r = read_mask(ref_path)
    if reference_remap:
        from medeff.data.label_remap import remap_labels

        ref = remap_labels(ref, reference_remap)
    if reorient and (pred.shape != ref.shape or not np.allclose(aff_p, aff_r, atol=geometry_atol)):
        moved = _reorient_onto(ref, aff_r, pred.shape, aff_p, geometry_atol)
        if moved is not None:  # same voxels stored in another axis order/direction (e.g. LAS vs LPS): lossless
            log.info("Reference '%s' reoriented onto the prediction grid (axis order/direction only).",
                     Path(ref_path).name)
            ref, sp_r, aff_r = moved, sp_p, aff_p
    if pred.shape != ref.shape:
        raise InputError(f"Prediction '{pred_path}' has shape {pred.shape} but reference '{ref_path}' has {ref.shape}.",
                         hint="resample the prediction onto the reference grid before evaluating.")
    if not np.allclose(aff_p, aff_r, atol=geometry_atol):
        raise InputError(f"Prediction '{pred_path}' and reference '{ref_path}' have different geometry "
                         f"(spacing {sp_p} vs {sp_r}, or origin/direction differ).",
                         hint="resample the prediction onto the reference grid, or raise geometry_tolerance_mm; a "
                         "reference storing the same voxels in another axis order is aligned with "
                         "reorient_reference=true.")
    # one pass per volume finds every label's bounding box; each label is then scored inside its own box
    if pred.min() < 0 or ref.min() < 0:
        raise InputError(f"Masks '{pred_path}' / '{ref_path}' hold negative labels.",
                         hint="label maps must use 0 for background and positive integers for labels.")
    boxes_p, boxes_r = ndimage.find_objects(pred), ndimage.find_objects(ref)
    present = {i + 1 for i, b in enumerate(boxes_p) if b is not None} | {i + 1 for i, b in enumerate(boxes_r)
                                                                          if b is not None}
    use = list(labels) if labels else sorted(present)
    rows = []
    for lab in use:
        bp = boxes_p[lab - 1] if 0 < lab <= len(boxes_p) else None
        br = boxes_r[lab - 1] if 0 < lab <= len(boxes_r) else None
        if bp is None and br is None:
            box = tuple(slice(0, 1) for _ in ref.shape)
        else:
            both = [b for b in (bp, br) if b is not None]
            box = tuple(slice(max(min(b[d].start for b in both) - 1, 0), min(max(b[d].stop for b in both) + 1, n))
                        for d, n in enumerate(ref.shape))
        p_box, r_box = (pred[box] == lab, ref[box] == lab) if (bp or br) else (np.zeros(1, bool), np.zeros(1, bool))
        m = label_metrics(p_box, r_box, sp_r, tolerance_mm=tol, conventions=conventions, image_shape=ref.shape)
        m["label"] = int(lab)
        rows.append(m)
    return rows


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
    title: str = "Segmentation evaluation",
    config: Mapping | None = None,
) -> dict:
    """Evaluate prediction masks against reference masks, per case and per label.

    Args:
        index: CSV (or DataFrame) with a case id, a prediction path and a reference path per row (relative paths
            are taken from the CSV's folder); or None with ``prediction_dir``/``reference_dir`` matched by file name.
        columns: ``case``, ``prediction``, ``reference``, ``group`` (patient, optional) column names.
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
    conventions = EmptyConventions(str(empty_both), one_empty_distance)
    inputs: dict = {}
    if index is not None:
        df, path = read_table(index, "segmentation index")
        where = f"Segmentation index '{path}'" if path else "Segmentation index"
        require_columns(df, [case_col, pred_col, ref_col, group_col], where)
        base = path.parent if path else Path.cwd()
        for c in (pred_col, ref_col):
            df[c] = [str(p if Path(p).is_absolute() else base / p) for p in df[c].astype(str)]
        if df[case_col].duplicated().any():
            raise InputError(f"{where}: {int(df[case_col].duplicated().sum())} duplicate case ids.",
                             hint="give each case one row.")
        inputs["index"] = path
    elif prediction_dir and reference_dir:
        df = match_folders(prediction_dir, reference_dir)
        case_col, pred_col, ref_col, group_col = "case_id", "prediction", "reference", None
    else:
        raise InputError("No segmentation input given.",
                         hint="set segmentation.index=<CSV of case id, prediction and reference paths>, or "
                         "segmentation.prediction_dir and segmentation.reference_dir (files matched by name).")
    label_names = {int(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}
    label_list = sorted(label_names) if label_names else ([int(v) for v in labels] if labels else None)
    from medeff.data.label_remap import parse_label_remap

    remap = parse_label_remap(reference_remap, "segmentation.reference_remap")
    jobs = [(p, r, label_list, float(tolerance_mm), conventions, float(geometry_tolerance_mm), remap,
             bool(reorient_reference)) for p, r in zip(df[pred_col], df[ref_col])]
    if num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(num_workers, os.cpu_count() or 1)) as ex:
            per_case = list(ex.map(_case_metrics, jobs, chunksize=max(1, len(jobs) // (8 * num_workers))))
    else:
        per_case = [_case_metrics(j) for j in jobs]

    pseudo = Pseudonymiser(pseudonym_salt)
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
    table = pd.DataFrame.from_records(records)
    groups = groups_raw.astype(str).to_numpy()
    aggregates = _aggregate(table, all_labels, label_names, groups, len(df), n_resamples, confidence,
                            bootstrap_method, seed)
    mean_dice = table.groupby("case", sort=False)["dice"].mean()
    worst = mean_dice.sort_values(na_position="first").head(worst_cases)
    worst_rows = []
    for case, md in worst.items():
        sub = table[table["case"] == case]
        worst_rows.append({"case": case, "mean_dice": None if pd.isna(md) else float(md),
                           "dice_per_label": {n: (None if pd.isna(d) else float(d))
                                              for n, d in zip(sub["label_name"], sub["dice"])}})
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
        "worst_cases": worst_rows,
        "per_case": table.replace({np.nan: None}).to_dict(orient="records"),
    }


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

    boot = cluster_bootstrap(stat, groups, n_resamples=n_resamples, confidence=confidence, method=method, seed=seed)
    out = []
    j = 0
    for lab in labels:
        mets = []
        for k in keys:
            col = values[:, j]
            ok = col[np.isfinite(col)]
            label, unit, digits = SEG_METRICS[k]
            mets.append(metric_record(k, label, boot["estimate"][j] if len(ok) else None, boot["low"][j],
                                      boot["high"][j], f"cluster bootstrap ({method}, {n_resamples} resamples)",
                                      n=int(len(ok)), unit=unit, n_excluded=int(len(col) - len(ok)),
                                      median=float(np.median(ok)) if len(ok) else None,
                                      q1=float(np.quantile(ok, 0.25)) if len(ok) else None,
                                      q3=float(np.quantile(ok, 0.75)) if len(ok) else None, digits=digits))
            j += 1
        out.append({"label": lab, "name": label_names.get(lab, f"label {lab}"), "metrics": mets})
    return out
