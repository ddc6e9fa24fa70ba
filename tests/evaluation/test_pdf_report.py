"""The PDF report is typeset: tables whose long cells wrap (nothing cut off), figures, page numbers; pages render."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from medeff.evaluation import evaluate_classification, render_report

LONG = "a deliberately long interval method description " * 6 + "UNBROKEN" * 25


def _res():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3 == 0
    df = pd.DataFrame({"case_id": [f"c{i}" for i in range(60)], "label": y.astype(int),
                       "score": np.clip(0.3 * y + rng.uniform(0, 0.7, 60), 0, 1)})
    res = evaluate_classification(df, n_resamples=50, title="PDF layout check")
    res["headline"][1]["ci_method"] = LONG
    return res


def _page_images(pdf_path, out_dir):
    """Grey-level arrays of every page: pypdfium2, else poppler's pdftoppm, else None."""
    try:
        import pypdfium2 as pdfium
    except ImportError:
        pdfium = None
    if pdfium is not None:
        doc = pdfium.PdfDocument(str(pdf_path))
        try:
            return [np.asarray(doc[i].render(scale=1.0).to_pil().convert("L")) for i in range(len(doc))]
        finally:
            doc.close()
    if shutil.which("pdftoppm"):
        from PIL import Image

        subprocess.run(["pdftoppm", "-r", "72", "-gray", "-png", str(pdf_path), str(out_dir / "page")], check=True)
        return [np.asarray(Image.open(p)) for p in sorted(out_dir.glob("page*.png"))]
    return None


def test_pdf_tables_wrap_and_pages_are_numbered(tmp_path, pdf_text):
    data = render_report(_res(), tmp_path, formats=["pdf"])["report.pdf"].read_bytes()
    n_pages = len(re.findall(rb"/Type /Page\b", data))
    assert n_pages >= 3
    text = pdf_text(data)
    extracted = text.split("\n" + " ".join(ln.strip() for ln in text.split("\n")))[0]  # as extracted, one line each
    for page in range(1, n_pages + 1):
        assert f"Page {page}" in text
    assert "~" not in text  # nothing truncated
    assert LONG.replace(" ", "") in text.replace(" ", "")  # the whole cell, wrapped over several lines
    long_lines = [ln for ln in extracted.split("\n") if "deliberately long" in ln]
    assert len(long_lines) >= 2  # the cell spans lines
    assert "Decision curve" in text and "Reporting checklist" in text and "Methods (for a paper)" in text
    assert b"/Subtype /Image" in data  # figures
    assert "Figures" in text and "ROC curve with 95% confidence band" in text  # a figure caption


def test_pdf_pages_render_non_blank(tmp_path):
    path = render_report(_res(), tmp_path, formats=["pdf"])["report.pdf"]
    pages = _page_images(path, tmp_path)
    if pages is None:
        pytest.skip("neither pypdfium2 (pip install pypdfium2) nor poppler's pdftoppm is available to render pages")
    assert len(pages) >= 3
    for i, img in enumerate(pages):
        ink = float((img < 200).mean())
        assert ink > 0.003, f"page {i + 1} looks blank ({ink:.4f} of pixels dark)"
