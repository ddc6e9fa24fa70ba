"""Reading prediction tables: column checks, aggregation of rows to cases, pseudonymised ids, metric records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medeff.errors import InputError
from medeff.evaluation.privacy import should_hash
from medeff.utils.pseudonyms import Pseudonymiser

__all__ = ["read_table", "require_columns", "aggregate_rows", "pseudonymise_ids", "metric_record", "format_ci",
           "clean_number", "fold_label_case"]


def read_table(source: str | Path | pd.DataFrame, what: str = "predictions") -> tuple[pd.DataFrame, Path | None]:
    """Read a CSV (or take a DataFrame); ids are kept as strings."""
    if isinstance(source, pd.DataFrame):
        return source.copy(), None
    path = Path(source)
    if not path.is_file():
        raise InputError(f"The {what} file '{path}' does not exist.", hint="check the path given in the config.",
                         path=str(path))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"The {what} file '{path}' is not a readable CSV ({type(exc).__name__}).",
                         hint="save it as comma-separated UTF-8 text with a header row.", path=str(path)) from exc
    if df.empty:
        raise InputError(f"The {what} file '{path}' has no rows.", hint="give a CSV with one row per case.",
                         path=str(path))
    return df, path


def require_columns(df: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """Raise InputError listing every configured column missing from ``df``."""
    missing = [c for c in columns if c and c not in df.columns]
    if missing:
        raise InputError(
            f"{where} lacks column(s) {missing}; its columns are {list(df.columns)}.",
            hint="set the column names in the evaluate config (e.g. columns.case=..., columns.label=...).",
        )


def to_float(df: pd.DataFrame, column: str, where: str) -> np.ndarray:
    """Column as floats; non-numeric or missing values raise InputError naming the row numbers."""
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(float)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        rows = ", ".join(str(i + 2) for i in bad[:10])  # +2: header line and 1-based lines
        raise InputError(f"{where}: column '{column}' has {len(bad)} missing or non-numeric value(s) "
                         f"(CSV lines {rows}).",
                         hint="fill in a numeric score for every row, or drop those rows.")
    return values


def fold_label_case(values: pd.Series, where: str) -> tuple[pd.Series, str | None]:
    """Reference labels with spellings that differ only in case (or surrounding spaces) merged into one class.

    "Benign", "benign" and " BENIGN" are one class, written as its most frequent spelling (ties: the first in sorted
    order). Returns the labels and a sentence naming the merged spellings (None when nothing was merged); missing
    values stay missing.
    """
    text = values.where(values.isna(), values.astype(str).str.strip())
    present = text.dropna()
    counts = present.value_counts()
    groups: dict[str, list[str]] = {}
    for spelling in sorted(counts.index, key=lambda v: (-counts[v], v)):
        groups.setdefault(spelling.casefold(), []).append(spelling)
    canonical = {s: spellings[0] for spellings in groups.values() for s in spellings}
    merged = [spellings for spellings in groups.values() if len(spellings) > 1]
    if not merged:
        return text, None
    parts = "; ".join(" + ".join(f"{s!r} ({int(counts[s])})" for s in spellings) + f" -> {spellings[0]!r}"
                      for spellings in merged)
    note = (f"{where}: reference labels that differ only in upper/lower case were merged into one class each: "
            f"{parts}.")
    return text.map(lambda v: canonical.get(v, v) if isinstance(v, str) else v), note


def aggregate_rows(df: pd.DataFrame, case_col: str, score_cols: Sequence[str], label_col: str,
                   keep_cols: Sequence[str], how: str | None, where: str) -> pd.DataFrame:
    """Aggregate several rows per case (images, slices) into one row: scores by mean or max, labels must agree.

    Raises:
        InputError: duplicate cases without an aggregation rule, or a case with conflicting reference labels.
    """
    counts = df[case_col].value_counts()
    if (counts > 1).any():
        if not how:
            raise InputError(f"{where}: {int((counts > 1).sum())} case ids occur on more than one row.",
                             hint="set aggregate=mean or aggregate=max to combine rows per case, or fix duplicates.")
        if how not in ("mean", "max"):
            raise InputError(f"{where}: unknown aggregate {how!r}.", hint="use aggregate=mean or aggregate=max.")
    conflicting = df.groupby(case_col, sort=False)[label_col].nunique(dropna=False)
    if (conflicting > 1).any():
        raise InputError(f"{where}: {int((conflicting > 1).sum())} case(s) have rows with different reference labels.",
                         hint="every row of a case needs the same reference label; check the label column.")
    agg = {c: (how or "first") for c in score_cols}
    agg[label_col] = "first"
    for c in keep_cols:
        if c and c not in agg and c != case_col:
            agg[c] = "first"
    out = df.groupby(case_col, sort=False).agg(agg).reset_index()
    out["n_rows"] = df.groupby(case_col, sort=False).size().to_numpy()
    return out


def pseudonymise_ids(values: pd.Series, mode: str | bool, pseudo: Pseudonymiser, prefix: str) -> tuple[pd.Series, bool]:
    """Replace ids by pseudonyms when ``mode`` says so (True, False or "auto")."""
    vals = values.astype(str)
    if should_hash(vals.unique(), mode):
        mapping = pseudo.with_prefix(f"{prefix}-").map(vals)
        return vals.map(mapping), True
    return vals, False


def clean_number(x) -> float | None:
    """Float or None (for NaN/inf) for JSON."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def metric_record(key: str, label: str, value, low=None, high=None, method: str | None = None, n: int | None = None,
                  unit: str = "", **extra) -> dict:
    """One reported number with its confidence interval."""
    rec = {"key": key, "label": label, "value": clean_number(value), "ci_low": clean_number(low),
           "ci_high": clean_number(high), "ci_method": method, "n": n, "unit": unit}
    rec.update(extra)
    return rec


def format_ci(value, low=None, high=None, digits: int = 2, unit: str = "", confidence: float | None = 0.95) -> str:
    """``0.91 (95% CI 0.87-0.94)`` (``(CI ...)`` when the confidence level is unknown); ``not estimable`` for a missing
    value."""
    v = clean_number(value)
    if v is None:
        return "not estimable"
    u = f" {unit}" if unit else ""
    text = f"{v:.{digits}f}{u}"
    lo, hi = clean_number(low), clean_number(high)
    if lo is not None and hi is not None:
        sep = " to " if lo < 0 or hi < 0 else "-"
        level = f"{round(confidence * 100):d}% " if confidence is not None else ""
        text += f" ({level}CI {lo:.{digits}f}{sep}{hi:.{digits}f}{u})"
    return text
