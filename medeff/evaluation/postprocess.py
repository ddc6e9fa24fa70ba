"""Post-processing of label maps, chosen per label on validation cases the way nnU-Net chooses it.

Steps (each acts on one label ``k`` of a label map and changes only that label's voxels and background):

* ``keep_largest_component``: voxels of ``k`` outside its largest connected component become background
  (``connectivity`` 1..3: face, edge or full neighbourhood; full by default), as MONAI's
  ``KeepLargestConnectedComponent``.
* ``fill_holes``: background voxels enclosed by ``k`` (not reachable from the border without crossing ``k``)
  become ``k``. Unlike MONAI's ``FillHoles``, voxels of other labels inside ``k`` are left as they are.

:func:`choose_postprocessing` scores, for every label, the prediction as it is and with each candidate step
(``keep_largest_component`` first, then ``fill_holes`` on top of what was kept) by the mean Dice over the validation
cases, and keeps a step only where it raises that mean by more than ``min_gain``. Cases where the label is absent
from both masks have no Dice and are left out of its mean. Each label is chosen on its own (a step of one label
never changes another label's voxels, except that holes filled for ``k`` may be voxels another label's step
emptied). :func:`apply_plan` applies a plan: first every ``keep_largest_component``, then every ``fill_holes``, in
label order. Plans are JSON (:func:`write_plan`, :func:`load_plan`); ``medeff postprocess`` chooses one from
validation predictions and ``medeff predict`` applies it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medeff.errors import ConfigError, InputError
from medeff.evaluation.masks import binary_dice
from medeff.utils.atomic import write_text_atomic
from medeff.utils.logging import get_logger
from medeff.utils.progress import track

__all__ = ["STEPS", "PLAN_FILE", "PLAN_KIND", "keep_largest_component", "fill_holes", "apply_plan",
           "choose_postprocessing", "case_scores", "write_plan", "load_plan", "plan_summary", "validation_pairs",
           "report_record"]

log = get_logger(__name__)
STEPS = ("keep_largest_component", "fill_holes")
PLAN_FILE = "postprocessing.json"
PLAN_KIND = "medeff-postprocessing"


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    c = ndim if connectivity is None else int(connectivity)
    if not 1 <= c <= ndim:
        raise ConfigError(f"connectivity must be 1..{ndim} (1: faces, {ndim}: full neighbourhood), got {connectivity}.",
                          hint=f"use connectivity={ndim} (the default) or a smaller neighbourhood.")
    return ndimage.generate_binary_structure(ndim, c)


def _largest(binary: np.ndarray, connectivity: int | None) -> np.ndarray:
    lab, n = ndimage.label(binary, structure=_structure(binary.ndim, connectivity))
    if n <= 1:
        return binary
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))  # ties: the component found first


def _holes(binary: np.ndarray, background: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(binary) & ~binary & background


def keep_largest_component(mask: np.ndarray, label: int, connectivity: int | None = None) -> np.ndarray:
    """A copy of ``mask`` where voxels of ``label`` outside its largest connected component are background."""
    out = np.array(mask, copy=True)
    binary = out == label
    out[binary & ~_largest(binary, connectivity)] = 0
    return out


def fill_holes(mask: np.ndarray, label: int) -> np.ndarray:
    """A copy of ``mask`` where background voxels enclosed by ``label`` are set to ``label``."""
    out = np.array(mask, copy=True)
    binary = out == label
    out[_holes(binary, out == 0)] = label
    return out


def apply_plan(mask: np.ndarray, plan: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, int]]:
    """Apply a plan's steps to a label map.

    Returns:
        ``(new mask, {"<label name>:<step>": voxels changed})`` (only steps that were applied).
    """
    out = np.array(mask, copy=True)
    changed: dict[str, int] = {}
    conn = plan.get("connectivity")
    entries = sorted(plan.get("labels") or [], key=lambda e: int(e["value"]))
    for step in STEPS:
        for e in entries:
            if step not in (e.get("steps") or []):
                continue
            k = int(e["value"])
            binary = out == k
            if step == "keep_largest_component":
                drop = binary & ~_largest(binary, conn)
                out[drop] = 0
            else:
                drop = _holes(binary, out == 0)
                out[drop] = k
            changed[f"{e.get('name') or k}:{step}"] = int(drop.sum())
    return out, changed


def case_scores(pred: np.ndarray, ref: np.ndarray, labels: Iterable[int],
                connectivity: int | None = None) -> dict[int, dict[str, float]]:
    """Dice of each label in one case: as predicted (``none``), after ``keep_largest_component`` (``klc``), after
    ``fill_holes`` (``fh``) and after both (``klc+fh``); NaN where the label is absent from both masks."""
    out = {}
    background = pred == 0
    for k in labels:
        binary, r = pred == k, ref == k
        if not binary.any():
            d = binary_dice(binary, r)
            out[int(k)] = {"none": d, "klc": d, "fh": d, "klc+fh": d}
            continue
        largest = _largest(binary, connectivity)
        filled = binary | _holes(binary, background)
        both = largest | _holes(largest, background | (binary & ~largest))
        out[int(k)] = {"none": binary_dice(binary, r), "klc": binary_dice(largest, r),
                       "fh": binary_dice(filled, r), "klc+fh": binary_dice(both, r)}
    return out


def _mean(values: Sequence[float]) -> float | None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def choose_postprocessing(cases: Iterable[tuple[np.ndarray, np.ndarray]], *, labels: Sequence[int] | None = None,
                          label_names: Sequence[str] | None = None, candidates: Sequence[str] = STEPS,
                          min_gain: float = 0.0, connectivity: int | None = None,
                          n_cases: int | None = None) -> dict[str, Any]:
    """Choose the post-processing of each label on validation cases.

    Args:
        cases: ``(prediction, reference)`` label maps on one grid, one pair per validation case (read one at a time).
        labels: label values to consider; None: every non-zero value present in any prediction or reference.
        label_names: name of each label value (index = value), e.g. a checkpoint's ``label_names``.
        candidates: steps to try (a subset of :data:`STEPS`).
        min_gain: a step is kept only where it raises the label's mean validation Dice by more than this.
        connectivity: neighbourhood of ``keep_largest_component`` (None: full).
        n_cases: number of pairs, for the progress bar.

    Returns:
        The plan (JSON-ready): per label its ``steps``, ``dice_before``, ``dice_after`` and the mean Dice of every
        candidate tried.

    Raises:
        ConfigError: an unknown candidate, bad connectivity or negative ``min_gain``.
        InputError: no cases, or a prediction and its reference differ in shape.
    """
    unknown = [c for c in candidates if c not in STEPS]
    if unknown:
        raise ConfigError(f"Unknown post-processing candidate(s) {unknown}.", hint=f"use any of {list(STEPS)}.")
    if not np.isfinite(min_gain) or min_gain < 0:
        raise ConfigError(f"min_gain must be a number >= 0, got {min_gain}.", hint="e.g. min_gain=0.")
    scores: dict[int, dict[str, list[float]]] = {}
    n = 0
    fixed = None if labels is None else [int(v) for v in labels]
    for pred, ref in track(cases, "Scoring post-processing", total=n_cases):
        pred, ref = np.asarray(pred), np.asarray(ref)
        if pred.shape != ref.shape:
            raise InputError(f"Validation case {n + 1}: prediction shape {pred.shape} differs from the reference "
                             f"{ref.shape}.", hint="give predictions on the grid of their reference masks.")
        present = fixed if fixed is not None else sorted(
            (set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())) - {0})
        if fixed is None:
            for k in present:  # a label first seen now was absent (Dice NaN) from the cases before
                scores.setdefault(int(k), {c: [float("nan")] * n for c in ("none", "klc", "fh", "klc+fh")})
        row = case_scores(pred, ref, present if fixed is not None else sorted(scores), connectivity)
        for k, d in row.items():
            s = scores.setdefault(k, {c: [] for c in d})
            for c, v in d.items():
                s[c].append(v)
        n += 1
    if n == 0:
        raise InputError("No validation cases to choose the post-processing on.",
                         hint="give the validation predictions and their reference masks.")
    names = list(label_names or [])
    entries = []
    for k in sorted(scores):
        s = scores[k]
        before = _mean(s["none"])
        steps: list[str] = []
        current, key = before, "none"
        tried: dict[str, dict[str, Any]] = {}
        for step in ("keep_largest_component", "fill_holes"):
            if step not in candidates or current is None:
                continue
            cand_key = {"none": {"keep_largest_component": "klc", "fill_holes": "fh"},
                        "klc": {"fill_holes": "klc+fh"}}[key][step]
            value = _mean(s[cand_key])
            gain = None if value is None else value - current
            chosen = gain is not None and gain > min_gain
            tried[step] = {"dice": value, "gain": gain, "chosen": chosen}
            if chosen:
                steps.append(step)
                current, key = value, cand_key
        entries.append({"value": k, "name": names[k] if k < len(names) else f"label {k}", "steps": steps,
                        "dice_before": before, "dice_after": current,
                        "n_cases": int(np.isfinite(np.asarray(s["none"], dtype=float)).sum()), "candidates": tried})
    plan = {"kind": PLAN_KIND, "version": 1, "label_names": names or None, "connectivity": connectivity,
            "min_gain": float(min_gain), "candidates": list(candidates), "n_cases": n, "labels": entries}
    for line in plan_summary(plan):
        log.info("%s", line)
    return plan


def plan_summary(plan: Mapping[str, Any]) -> list[str]:
    """One line per label: the steps chosen and the validation Dice before and after."""
    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    return [f"{e['name']}: {' + '.join(e['steps']) or 'none'} (validation Dice {f(e['dice_before'])} -> "
            f"{f(e['dice_after'])}, {e['n_cases']} case(s))" for e in plan.get("labels") or []]


def write_plan(plan: Mapping[str, Any], path: str | Path, *, overwrite: bool = True) -> Path:
    """Write a plan as JSON, atomically."""
    return write_text_atomic(path, json.dumps(plan, indent=2, allow_nan=False) + "\n", overwrite=overwrite)


def load_plan(path: str | Path, *, label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Read and check a plan.

    Args:
        path: the plan file.
        label_names: the label names of the model it is applied with (checked against the plan's).

    Raises:
        InputError: unreadable, not a medeff post-processing plan, or chosen for other labels.
    """
    path = Path(path)
    hint = "choose it again with medeff postprocess, or pass postprocess.enabled=false."
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"Post-processing plan '{path}' cannot be read: {exc}.", hint=hint, path=str(path)) from exc
    if not isinstance(plan, dict) or plan.get("kind") != PLAN_KIND or not isinstance(plan.get("labels"), list):
        raise InputError(f"'{path}' is not a medeff post-processing plan (kind {PLAN_KIND}).", hint=hint,
                         path=str(path))
    for e in plan["labels"]:
        bad = [s for s in e.get("steps") or [] if s not in STEPS]
        if not isinstance(e.get("value"), int) or e["value"] < 1 or bad:
            raise InputError(f"Post-processing plan '{path}' has an invalid entry {e!r} (label value >= 1, steps "
                             f"from {list(STEPS)}).", hint=hint, path=str(path))
    if label_names is not None:
        stored = plan.get("label_names")
        if stored is not None and list(stored) != list(label_names):
            raise InputError(f"Post-processing plan '{path}' was chosen for labels {stored}; the model has "
                             f"{list(label_names)}.", hint=hint, path=str(path))
        too_big = [e["value"] for e in plan["labels"] if e["value"] >= len(label_names)]
        if too_big:
            raise InputError(f"Post-processing plan '{path}' names label value(s) {too_big}; the model has "
                             f"{len(label_names)} labels.", hint=hint, path=str(path))
    return plan


def validation_pairs(index: str | Path | None = None, *, prediction_dir: str | Path | Sequence | None = None,
                     reference_dir: str | Path | Sequence | None = None,
                     geometry_tolerance_mm: float = 1e-3) -> tuple[int, Iterable[tuple[np.ndarray, np.ndarray]]]:
    """``(number of cases, pairs read one at a time)`` from a CSV (``case_id, prediction, reference``; relative
    paths from the CSV's folder) or from folders matched by file name (lists of folders: one pair per fold, pooled).

    Raises:
        InputError: no input, missing columns or files, unmatched folders; while iterating, an unreadable mask or
            masks on different grids.
    """
    import pandas as pd

    from medeff.evaluation.masks import masks_on_one_grid, read_mask
    from medeff.evaluation.segmentation import match_folders
    from medeff.evaluation.tables import read_table, require_columns

    if index is not None:
        df, path = read_table(index, "validation index")
        require_columns(df, ["prediction", "reference"], f"Validation index '{path}'")
        base = path.parent if path else Path.cwd()
        preds = [str(p if Path(p).is_absolute() else base / p) for p in df["prediction"].astype(str)]
        refs = [str(p if Path(p).is_absolute() else base / p) for p in df["reference"].astype(str)]
    elif prediction_dir and reference_dir:
        pdirs = [prediction_dir] if isinstance(prediction_dir, (str, Path)) else list(prediction_dir)
        rdirs = [reference_dir] if isinstance(reference_dir, (str, Path)) else list(reference_dir)
        if len(pdirs) != len(rdirs):
            raise InputError(f"{len(pdirs)} prediction folder(s) but {len(rdirs)} reference folder(s).",
                             hint="give one reference folder per prediction folder (one pair per fold).")
        df = pd.concat([match_folders(p, r) for p, r in zip(pdirs, rdirs)], ignore_index=True)
        preds, refs = list(df["prediction"]), list(df["reference"])
    else:
        raise InputError("No validation predictions given.",
                         hint="set index=<CSV of prediction and reference paths>, or prediction_dir and "
                              "reference_dir (files matched by name; lists of folders for several folds).")

    def read():
        for p, r in zip(preds, refs):
            pm, rm = masks_on_one_grid(read_mask(p), read_mask(r), f"Validation case '{Path(p).name}'")
            if pm.array.shape != rm.array.shape or not (
                    np.allclose(pm.spacing, rm.spacing, atol=geometry_tolerance_mm)
                    and np.allclose(pm.origin, rm.origin, atol=geometry_tolerance_mm)
                    and np.allclose(pm.direction, rm.direction, atol=1e-4)):
                raise InputError(f"Prediction '{p}' and reference '{r}' are not on one grid (shape {pm.array.shape} "
                                 f"vs {rm.array.shape}, or spacing/origin/direction differ).",
                                 hint="give predictions written on the grid of their reference (medeff predict "
                                      "writes them on the input's grid).", path=str(p))
            yield np.asarray(pm.array), np.asarray(rm.array)

    return len(preds), read()


def report_record(source: str | Path | None, prediction_paths: Sequence[str] = ()) -> dict[str, Any] | None:
    """The post-processing a segmentation report lists: per label the steps applied and the validation Dice before
    and after.

    Args:
        source: a plan (``postprocessing.json``) or the ``predictions.json`` of ``medeff predict``; None looks for
            the ``predictions.json`` beside the first prediction mask.
        prediction_paths: the evaluated prediction masks.

    Returns:
        ``{"source", "n_validation_cases", "labels": [...]}``, ``{"source", "labels": []}`` when the predictions were
        written without post-processing, or None when nothing is known.

    Raises:
        InputError: an explicit ``source`` that cannot be read or holds no post-processing record.
    """
    explicit = source is not None
    if source is None:
        if not prediction_paths:
            return None
        source = Path(prediction_paths[0]).parent / "predictions.json"
        if not source.is_file():
            return None
    path = Path(source)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        if not explicit:
            return None
        raise InputError(f"segmentation.postprocessing '{path}' cannot be read: {exc}.",
                         hint="give the postprocessing.json of medeff postprocess or the predictions.json of "
                              "medeff predict.", path=str(path)) from exc
    if isinstance(doc, dict) and doc.get("kind") == PLAN_KIND:
        record = {"n_validation_cases": doc.get("n_cases"), "labels": doc.get("labels") or []}
    elif isinstance(doc, dict) and "postprocessing" in doc:
        record = doc["postprocessing"] or {"labels": []}
    elif explicit:
        raise InputError(f"segmentation.postprocessing '{path}' holds no post-processing record.",
                         hint="give the postprocessing.json of medeff postprocess or the predictions.json of "
                              "medeff predict.", path=str(path))
    else:
        return None
    labels = [{k: e.get(k) for k in ("value", "name", "steps", "dice_before", "dice_after", "n_cases")}
              for e in record.get("labels") or []]
    return {"source": path.name, "n_validation_cases": record.get("n_validation_cases"), "labels": labels}
