"""Render an evaluation result as a self-contained HTML report, a PDF with the same content, and JSON/CSV files.

Outputs (all written atomically):
    report.html   tables and figures (embedded base64 PNG), provenance, configuration
    report.pdf    the same sections, typeset with ReportLab: wrapped tables, figures, page numbers
    summary.json  every number except the per-case rows
    metrics.csv   every summary number as one flat row (value, CI, method, n, unit)
    per_case.csv  one row per case (and label, for segmentation)
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from medeff.evaluation.sections import build_sections, flat_metrics
from medeff.evaluation.templates import HTML_TEMPLATE
from medeff.utils.atomic import atomic_open, write_json_atomic, write_text_atomic
from medeff.utils.options import look_up

__all__ = ["render_report", "load_results", "save_results", "report_files", "check_results", "FORMATS"]

FORMATS = ("html", "pdf", "json", "csv")
log = logging.getLogger(__name__)


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            return _json_safe(obj.item())
        except (ValueError, AttributeError):
            pass
    return obj


def save_results(results: dict, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write the full results (including per-case rows and curves) as JSON, atomically; NaN becomes null.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        OutputWriteError: the file cannot be written (permissions, disk full).
    """
    return write_json_atomic(path, _json_safe(results), overwrite=overwrite)


def report_files(formats: Sequence[str] = FORMATS) -> list[str]:
    """Names of the files :func:`render_report` writes for ``formats``."""
    names = {"json": ["summary.json"], "csv": ["per_case.csv", "metrics.csv"], "html": ["report.html"],
             "pdf": ["report.pdf"]}
    return [n for f in FORMATS if f in formats for n in names[f]]


def load_results(path: str | Path) -> dict:
    """Read results written by :func:`save_results` (``medeff evaluate``)."""
    from medeff.errors import InputError

    path = Path(path)
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"Results file '{path}' does not exist.", hint="run `medeff evaluate` first.",
                         path=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"Results file '{path}' is not valid JSON ({exc}).", hint="re-run `medeff evaluate`.",
                         path=str(path)) from exc
    if not isinstance(res, dict) or res.get("kind") not in ("classification", "segmentation"):
        raise InputError(f"Results file '{path}' is not a medeff evaluation result.",
                         hint="give the results.json written by `medeff evaluate`.", path=str(path))
    check_results(res, path)
    return res


def _required_keys(res: dict) -> list[str]:
    if res.get("kind") == "segmentation":
        return ["aggregates"]
    if res.get("multiclass"):
        return ["headline", "per_class", "class_names", "confusion_matrix"]
    return ["headline", "operating_points"]


def check_results(res: dict, path: str | Path | None = None) -> None:
    """Refuse results that lack what every report of their kind shows; other parts (``settings``, ``counts``,
    ``per_case``, ``provenance``, curves) are optional and their sections say "not available".

    Raises:
        InputError: ``kind`` is unknown, or a key the report cannot do without is missing (named).
    """
    from medeff.errors import InputError

    where = f"Results file '{path}'" if path else "The results"
    if not isinstance(res, dict) or res.get("kind") not in ("classification", "segmentation"):
        raise InputError(f"{where} is not a medeff evaluation result (no 'kind' of classification or segmentation).",
                         hint="give the results.json written by `medeff evaluate`.", path=None if path is None
                         else str(path))
    missing = [k for k in _required_keys(res) if not isinstance(res.get(k), list)]
    if missing:
        raise InputError(f"{where} lacks the key(s) {missing}, which every {res['kind']} report shows.",
                         hint="give the results.json (or the summary.json) written by `medeff evaluate`; a file "
                         "edited by hand must keep these keys.", path=None if path is None else str(path))


def _figures(res: dict):
    """(caption, figure) pairs; characters no available font can draw become [U+XXXX] markers in the figures."""
    from medeff.evaluation.figures import classification_figures, segmentation_figures
    from medeff.evaluation.fonts import log_missing, sanitise_figure

    figs = classification_figures(res) if res["kind"] == "classification" else segmentation_figures(res)
    missing: set[int] = set()
    for _, fig in figs:
        sanitise_figure(fig, missing)
    log_missing(missing, "Report figures")
    return figs


def _png(fig) -> str:
    import matplotlib

    from medeff.evaluation.fonts import pdf_rc, sanitise_figure

    rc = {k: v for k, v in pdf_rc(sanitise_figure(fig)).items() if k.startswith("font.")}  # CJK fallback fonts
    buf = io.BytesIO()
    with matplotlib.rc_context(rc):
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_report(results: dict, out_dir: str | Path, formats: Sequence[str] = FORMATS, *,
                  overwrite: bool = True) -> dict[str, Path]:
    """Write the report files for ``results`` into ``out_dir``.

    Args:
        results: output of :func:`evaluate_classification` / :func:`evaluate_segmentation` (or :func:`load_results`).
        out_dir: destination folder (created).
        formats: any of ``html``, ``pdf``, ``json``, ``csv``.
        overwrite: replace existing files (else :class:`OutputExistsError`).

    Returns:
        Mapping of output name to path.

    Raises:
        OutputExistsError: a report file exists and ``overwrite`` is False (checked before anything is written).
        OutputWriteError: a file cannot be written; the files this call created are removed again.
    """
    from medeff.utils.atomic import check_writable

    for f in formats:
        look_up(f, FORMATS, what="report format", key="formats")
    check_results(results)
    results = _json_safe(results)
    out_dir = Path(out_dir)
    targets = [out_dir / name for name in report_files(formats)
               if name != "per_case.csv" or "per_case" in results]
    for target in targets:  # refuse before writing anything, so a refusal leaves no mixed report behind
        check_writable(target, overwrite=overwrite)
    new = [t for t in targets if not t.exists()]
    try:
        return _render(results, out_dir, formats, overwrite)
    except BaseException:
        for t in new:  # no half report: drop the files this call created (each was complete, but not the set)
            t.unlink(missing_ok=True)
        raise


def _render(results: dict, out_dir: Path, formats: Sequence[str], overwrite: bool) -> dict[str, Path]:
    written: dict[str, Path] = {}
    sections = build_sections(results)
    if "json" in formats:
        summary = {k: v for k, v in results.items() if k != "per_case"}
        written["summary.json"] = write_json_atomic(out_dir / "summary.json", summary, overwrite=overwrite)
    if "csv" in formats:
        if "per_case" in results:
            written["per_case.csv"] = _write_csv(out_dir / "per_case.csv", results["per_case"], overwrite)
        else:  # a summary.json: no per-case rows to write
            log.info("No per-case rows in these results (a summary.json?): per_case.csv not written.")
        written["metrics.csv"] = _write_csv(out_dir / "metrics.csv", flat_metrics(results), overwrite)
    if "html" in formats or "pdf" in formats:
        figs = _figures(results)
        if "html" in formats:
            import jinja2

            env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
            html = env.from_string(HTML_TEMPLATE).render(
                title=_title(results), sections=sections, figures=[(cap, _png(f)) for cap, f in figs],
                kind=results["kind"])
            written["report.html"] = write_text_atomic(out_dir / "report.html", html, overwrite=overwrite)
        if "pdf" in formats:
            written["report.pdf"] = _write_pdf(out_dir / "report.pdf", _title(results), sections, figs, overwrite)
    return written


def _title(results: dict) -> str:
    return str(results.get("title") or f"{str(results['kind']).capitalize()} evaluation")


def _write_csv(path: Path, rows: list[dict], overwrite: bool) -> Path:
    fields: list[str] = []
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    with atomic_open(path, "w", overwrite=overwrite, newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else json.dumps(v) if isinstance(v, (dict, list)) else v)
                        for k, v in r.items()})
    return path


def _write_pdf(path: Path, title: str, sections: list[dict], figs, overwrite: bool) -> Path:
    from medeff.evaluation.pdf import write_pdf

    return write_pdf(path, title, sections, figs, overwrite=overwrite)
