"""Graded training targets read from case metadata (``data.soft_label``).

Binary labels often come from a finer grading: LIDC's readers rate malignancy 1-5 and the label is ``rating >= 4``.
Training on the grade keeps what the binary label throws away (a nodule rated 5 is surer than one rated 4). With
``data.soft_label = {column: malignancy_rating, map: {1: 0.0, 2: 0.25, 4: 0.75, 5: 1.0}}`` every training case
gets ``soft_label``, the target probability of the positive class, and the classification loss is the cross-entropy
against ``[1 - p, p]`` (:class:`medeff.engine.losses.ClassificationLoss`). Validation keeps the hard labels, so the
checkpoint is chosen, and the metrics are computed, on the label the model is used for.

A map that disagrees with a case's hard label (a malignant case mapped below 0.5, or a benign one above) is refused:
the soft target would then train the opposite decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medeff.errors import ConfigError, IndexValidationError

__all__ = ["SOFT_LABEL_KEY", "attach_soft_labels", "check_soft_label_spec"]

SOFT_LABEL_KEY = "soft_label"


def check_soft_label_spec(spec: Mapping[str, Any] | None, num_classes: int, task: str) -> dict[str, Any] | None:
    """The validated ``data.soft_label`` setting: ``{"column": str, "map": {value: probability}}`` or None.

    Raises:
        ConfigError: not a binary classification, no column, or a mapped value outside [0, 1].
    """
    if not spec:
        return None
    if task != "classification" or num_classes not in (1, 2):
        raise ConfigError(f"data.soft_label grades the positive class of a binary classifier; this data is {task} "
                          f"with {num_classes} classes.", hint="set data.soft_label=null.")
    column = spec.get("column")
    if not column:
        raise ConfigError("data.soft_label has no column.",
                          hint="set data.soft_label.column to a case metadata column of the index "
                               "(e.g. malignancy_rating).")
    raw = spec.get("map")
    if not raw:
        raise ConfigError(f"data.soft_label.map is empty for column {column!r}.",
                          hint="give the target probability of each value, e.g. {1: 0.0, 2: 0.25, 4: 0.75, 5: 1.0}.")
    table: dict[str, float] = {}
    for value, prob in dict(raw).items():
        p = float(prob)
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"data.soft_label.map gives {column}={value} the probability {p}; it must lie in [0, 1].",
                              hint="map every value to the target probability of the positive class.")
        table[_key(value)] = p
    return {"column": str(column), "map": table}


def _key(value: Any) -> str:
    """Map keys and metadata values compared as text, with 4 and 4.0 the same."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value).strip()
    return str(int(f)) if f.is_integer() else repr(f)


def attach_soft_labels(records: Sequence[dict[str, Any]], spec: Mapping[str, Any], *, index_path: str) -> None:
    """Set ``record["soft_label"]`` from ``record["meta_<column>"]`` for every record (in place).

    Raises:
        IndexValidationError: a case lacks the column, its value is not in the map, or the mapped probability
            contradicts its label.
    """
    column, table = spec["column"], spec["map"]
    key = f"meta_{column}"
    missing = [r["case_id"] for r in records if r.get(key) in (None, "")]
    if missing:
        raise IndexValidationError(
            f"data.soft_label reads the metadata column {column!r}, which {len(missing)} case(s) of '{index_path}' "
            f"lack (first: {missing[:5]}).",
            hint=f"rebuild the index from a source whose metadata has {column!r} for every case, or set "
                 "data.soft_label=null.", path=index_path)
    unmapped = sorted({_key(r[key]) for r in records} - set(table))
    if unmapped:
        raise IndexValidationError(
            f"data.soft_label.map has no probability for {column} value(s) {unmapped} found in '{index_path}'.",
            hint=f"add them to data.soft_label.map (mapped now: {sorted(table)}).", path=index_path)
    contradict = []
    for r in records:
        p = table[_key(r[key])]
        if r.get("label") is not None and (p > 0.5) != (int(r["label"]) > 0) and p != 0.5:
            contradict.append(f"{r['case_id']} (label {r['label']}, {column}={r[key]} -> {p})")
        r[SOFT_LABEL_KEY] = p
    if contradict:
        raise IndexValidationError(
            f"data.soft_label.map contradicts the label of {len(contradict)} case(s) of '{index_path}': "
            f"{contradict[:3]}.", hint="map values of positive cases above 0.5 and of negative ones below.",
            path=index_path)
