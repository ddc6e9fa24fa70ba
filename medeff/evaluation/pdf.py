"""The PDF report, typeset with ReportLab like the HTML report: headings, paragraphs, real tables whose cells wrap
(no truncation), the figures after the summary (as in the HTML), and a page number on every page.

Fonts: text that fits Windows-1252 (Latin-1) is set in the standard PDF fonts (Helvetica, Courier: plain strings, no
embedded font). Other text is set in DejaVu Sans / DejaVu Sans Mono (shipped with matplotlib) and any installed
fallback font of :mod:`medeff.evaluation.fonts`, embedded as subsets with a ToUnicode map, so it stays searchable
and copyable; a character no font has becomes a visible ``[U+XXXX]`` marker (logged once per report).
Figures are drawn by matplotlib into PNG images (150 dpi).
"""

from __future__ import annotations

import io
import logging
from contextlib import contextmanager
from pathlib import Path
from xml.sax.saxutils import escape

from medeff.utils.atomic import atomic_path

__all__ = ["write_pdf"]

log = logging.getLogger(__name__)

_CORE = {"sans": "Helvetica", "bold": "Helvetica-Bold", "mono": "Courier"}
_FIG_DPI = 150


class _Fonts:
    """Markup of report text for ReportLab paragraphs, with per-run font choice for text outside Latin-1."""

    def __init__(self) -> None:
        self.missing: set[int] = set()
        self._registered: set[str] = set()

    def _register(self, name: str, path: str) -> None:
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFont

        if name not in self._registered:
            if name not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(TTFont(name, path))
            self._registered.add(name)

    def markup(self, text, style: str = "sans") -> str:
        """``text`` as paragraph markup: escaped; outside Latin-1, runs wrapped in ``<font name=...>``."""
        from medeff.evaluation.fonts import core_font_text, drawable, truetype_fonts

        text = str(text)
        if core_font_text(text):
            return escape(text)
        text = drawable(text, self.missing)
        fonts = truetype_fonts()
        order = fonts[style] + [f for f in fonts["sans"] if f not in fonts[style]]
        runs: list[tuple[str | None, str]] = []
        for ch in text:
            name = None
            for fname, path, cmap in order:
                if ord(ch) in cmap:
                    self._register(fname, path)
                    name = fname
                    break
            if runs and runs[-1][0] == name:
                runs[-1] = (name, runs[-1][1] + ch)
            else:
                runs.append((name, ch))
        return "".join(escape(t) if n is None else f'<font name="{n}">{escape(t)}</font>' for n, t in runs)


def _styles():
    from reportlab.lib import colors
    from reportlab.lib.styles import ParagraphStyle

    base = ParagraphStyle("body", fontName=_CORE["sans"], fontSize=9, leading=12, spaceAfter=4)
    return {
        "title": ParagraphStyle("title", parent=base, fontName=_CORE["bold"], fontSize=16, leading=20, spaceAfter=6),
        "note": ParagraphStyle("note", parent=base, fontSize=8, leading=10, textColor=colors.HexColor("#555555")),
        "h2": ParagraphStyle("h2", parent=base, fontName=_CORE["bold"], fontSize=12, leading=15, spaceBefore=10,
                             spaceAfter=4, keepWithNext=1),
        "body": base,
        "caption": ParagraphStyle("caption", parent=base, fontName=_CORE["bold"], fontSize=8.5, leading=11,
                                  spaceBefore=4, spaceAfter=2, keepWithNext=1),
        "cell": ParagraphStyle("cell", parent=base, fontSize=7.5, leading=9, spaceAfter=0),
        "head": ParagraphStyle("head", parent=base, fontName=_CORE["bold"], fontSize=7.5, leading=9, spaceAfter=0),
        "mono": ParagraphStyle("mono", parent=base, fontName=_CORE["mono"], fontSize=7, leading=8.5, spaceAfter=0),
        "figcap": ParagraphStyle("figcap", parent=base, fontSize=8, leading=10,
                                 textColor=colors.HexColor("#555555"), spaceAfter=10),
    }


def _column_widths(cells: list[list[str]], styles: list[str], available: float) -> list[float]:
    """Natural widths (longest cell), shrunk by water-filling so they fit ``available``: narrow columns keep their
    width, the wide ones share the rest; their cells wrap."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    n = max(len(r) for r in cells)
    pad = 8.0
    natural = []
    for i in range(n):
        w = 0.0
        for r, style in zip(cells, styles):
            if i < len(r):
                font = _CORE["bold"] if style == "head" else _CORE["sans"]
                w = max(w, stringWidth(r[i], font, 7.5))
        natural.append(w + pad)
    if sum(natural) <= available:
        return natural
    widths = [0.0] * n
    left, open_cols = available, list(range(n))
    while open_cols:
        share = left / len(open_cols)
        fixed = [i for i in open_cols if natural[i] <= share]
        if not fixed:
            for i in open_cols:
                widths[i] = share
            break
        for i in fixed:
            widths[i] = natural[i]
            left -= natural[i]
        open_cols = [i for i in open_cols if i not in fixed]
    return widths


def _table(tab: dict, fonts: _Fonts, st: dict, available: float):
    from reportlab.lib import colors
    from reportlab.platypus import Paragraph, Table, TableStyle

    headers = [str(h) for h in tab["headers"]]
    rows = [[str(c) for c in r] for r in tab["rows"]]
    n = max([len(headers)] + [len(r) for r in rows])
    headers += [""] * (n - len(headers))
    rows = [r + [""] * (n - len(r)) for r in rows]
    widths = _column_widths([headers] + rows, ["head"] + ["cell"] * len(rows), available)
    data = [[Paragraph(fonts.markup(h, "bold"), st["head"]) for h in headers]]
    data += [[Paragraph(fonts.markup(c), st["cell"]) for c in r] for r in rows]
    table = Table(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
    style = [("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#bbbbbb")),
             ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f0f3f7")),
             ("VALIGN", (0, 0), (-1, -1), "TOP"),
             ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3),
             ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]
    style += [("BACKGROUND", (0, i), (-1, i), colors.HexColor("#fafafa")) for i in range(2, len(data), 2)]
    table.setStyle(TableStyle(style))
    return table


def _figure(cap: str, fig, fonts: _Fonts, st: dict, width: float, height: float):
    import matplotlib
    from reportlab.lib.utils import ImageReader
    from reportlab.platypus import Image, Paragraph

    from medeff.evaluation.fonts import pdf_rc, sanitise_figure

    rc = {k: v for k, v in pdf_rc(sanitise_figure(fig)).items() if k.startswith("font.")}  # CJK fallback fonts
    buf = io.BytesIO()
    with matplotlib.rc_context(rc):
        fig.savefig(buf, format="png", dpi=_FIG_DPI, bbox_inches="tight")
    buf.seek(0)
    px_w, px_h = ImageReader(buf).getSize()
    buf.seek(0)
    w, h = px_w * 72.0 / _FIG_DPI, px_h * 72.0 / _FIG_DPI
    scale = min(1.0, width / w, height / h)
    return [Image(buf, width=w * scale, height=h * scale, hAlign="LEFT"), Paragraph(fonts.markup(cap), st["figcap"])]


def _figure_grid(figures, fonts: _Fonts, st: dict, width: float, height: float) -> list:
    """Figures two per row (as the HTML shows them side by side), each row kept on one page."""
    from reportlab.platypus import Table, TableStyle

    cells = [_figure(cap, fig, fonts, st, 0.49 * width - 8, height) for cap, fig in figures]
    rows = [cells[i:i + 2] + ([[]] if i + 1 == len(cells) else []) for i in range(0, len(cells), 2)]
    out = []
    for row in rows:
        t = Table([row], colWidths=[0.5 * width, 0.5 * width], hAlign="LEFT")
        t.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                               ("RIGHTPADDING", (0, 0), (-1, -1), 8)]))
        out.append(t)
    return out


@contextmanager
def _binary_streams():
    """Flate streams without the ASCII85 layer (smaller files; any PDF text extractor reads them)."""
    from reportlab import rl_config

    old = rl_config.useA85
    rl_config.useA85 = 0
    try:
        yield
    finally:
        rl_config.useA85 = old


def write_pdf(path: str | Path, title: str, sections: list[dict], figures, *, overwrite: bool = True) -> Path:
    """Write the report ``sections`` (from :func:`medeff.evaluation.sections.build_sections`) and ``figures``
    (``(caption, matplotlib Figure)`` pairs, placed after the first section as in the HTML) to ``path``, atomically.
    """
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.units import cm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

    from medeff.evaluation.fonts import log_missing

    path = Path(path)
    fonts = _Fonts()
    st = _styles()
    page_w, page_h = landscape(A4)
    margin = 1.5 * cm
    avail_w, avail_h = page_w - 2 * margin, page_h - 2 * margin - 0.6 * cm
    story = [Paragraph(fonts.markup(title, "bold"), st["title"]),
             Paragraph("Generated by medeff. Identifiers of cases and patients are pseudonymised where configured; no "
                       "other column of the input is used.", st["note"])]
    for i, sec in enumerate(sections):
        story.append(Paragraph(fonts.markup(sec["title"], "bold"), st["h2"]))
        story += [Paragraph(fonts.markup(p), st["body"]) for p in sec.get("paragraphs") or []]
        for tab in sec.get("tables") or []:
            story.append(Paragraph(fonts.markup(tab["caption"], "bold"), st["caption"]))
            story.append(_table(tab, fonts, st, avail_w))
            story.append(Spacer(1, 6))
        if sec.get("config"):
            story.append(Paragraph("Configuration used", st["caption"]))
            for line in str(sec["config"]).splitlines():
                stripped = line.lstrip(" ")
                indent = "&nbsp;" * (len(line) - len(stripped))
                story.append(Paragraph(indent + fonts.markup(stripped, "mono"), st["mono"]))
        if i == 0 and figures:
            story.append(Paragraph("Figures", st["h2"]))
            story += _figure_grid(figures, fonts, st, avail_w, 0.8 * avail_h)

    def footer(canvas, doc):
        canvas.saveState()
        canvas.setFont(_CORE["sans"], 8)
        canvas.drawString(margin, 0.8 * cm, "medeff evaluation report")
        canvas.drawRightString(page_w - margin, 0.8 * cm, f"Page {doc.page}")
        canvas.restoreState()

    with atomic_path(path, overwrite=overwrite) as tmp, _binary_streams():
        doc = SimpleDocTemplate(str(tmp), pagesize=(page_w, page_h), leftMargin=margin, rightMargin=margin,
                                topMargin=margin, bottomMargin=margin + 0.6 * cm, title=title, creator="medeff",
                                author="medeff", invariant=1)
        doc.build(story, onFirstPage=footer, onLaterPages=footer)
    log_missing(fonts.missing, f"PDF report '{path.name}'")
    return path
