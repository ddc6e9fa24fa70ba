"""Fonts of the PDF report and figures: text outside Latin-1 (a Japanese title, a Cyrillic subgroup value) is drawn
with embedded TrueType fonts instead of becoming "??".

The PDF renderer is matplotlib's PdfPages. A page whose text all fits the Windows-1252 code page (Latin-1 and a few
signs) keeps the standard PDF fonts (Helvetica, Courier: small files, text searchable as plain strings). Any other
page embeds TrueType fonts (Type 42, with a ToUnicode map so the text stays searchable and copyable): DejaVu Sans and
DejaVu Sans Mono, which matplotlib ships and which cover Latin, Greek, Cyrillic, Armenian, Georgian, Hebrew and many
symbols, followed by any CJK TrueType font installed on the machine (e.g. Noto Sans CJK, IPAGothic, WenQuanYi Zen
Hei). A character that no available font can draw is replaced by a visible marker ``[U+XXXX]`` (its code point) and
logged once per report; the HTML report shows every character as given.
"""

from __future__ import annotations

import functools
import logging

__all__ = ["MARKER", "core_font_text", "pdf_rc", "drawable", "sanitise_figure", "truetype_fonts"]

log = logging.getLogger(__name__)

MARKER = "[U+{:04X}]"
#: families tried after DejaVu for characters it lacks (first installed ones win), CJK first
_FALLBACK_FAMILIES = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans JP", "Noto Sans SC", "Source Han Sans",
                      "IPAGothic", "IPAexGothic", "IPAPGothic", "TakaoGothic", "VL Gothic", "WenQuanYi Zen Hei",
                      "WenQuanYi Micro Hei", "Droid Sans Fallback", "Noto Sans", "Unifont")


def core_font_text(text: str) -> bool:
    """Whether the standard PDF fonts can show ``text`` (it encodes to Windows-1252, as matplotlib writes them)."""
    try:
        text.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _fonts() -> tuple[list[str], list[str], frozenset[int]]:
    """(sans families, monospace families, code points that some font among them can draw)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    entries = font_manager.fontManager.ttflist
    fallback = []
    for family in _FALLBACK_FAMILIES:
        paths = [e.fname for e in entries if e.name == family and e.fname.lower().endswith(".ttf")]
        if paths:
            fallback.append((family, paths[0]))
    covered: set[int] = set()
    for family in ("DejaVu Sans", "DejaVu Sans Mono"):
        covered.update(FT2Font(font_manager.findfont(family, fallback_to_default=False)).get_charmap())
    for _, path in fallback:
        try:
            covered.update(FT2Font(path).get_charmap())
        except (OSError, RuntimeError):  # an unreadable font file adds nothing
            continue
    names = [f for f, _ in fallback]
    return ["DejaVu Sans", *names], ["DejaVu Sans Mono", *names], frozenset(covered)


@functools.lru_cache(maxsize=1)
def truetype_fonts() -> dict[str, list[tuple[str, str, frozenset[int]]]]:
    """TrueType files for the PDF report, per style (``sans``, ``bold``, ``mono``): ``[(name, path, code points)]``
    in the order they are tried, DejaVu (shipped with matplotlib) first, then the installed fallback fonts."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    def entry(name: str, path) -> tuple[str, str, frozenset[int]] | None:
        path = str(path)  # plain str (newer matplotlib returns a str subclass)
        try:
            return name, path, frozenset(FT2Font(path).get_charmap())
        except (OSError, RuntimeError):
            return None

    sans = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=False)
    bold = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold"),
                                 fallback_to_default=False)
    mono = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans Mono"), fallback_to_default=False)
    entries = font_manager.fontManager.ttflist
    fallback = []
    for i, family in enumerate(_FALLBACK_FAMILIES):
        paths = [e.fname for e in entries if e.name == family and e.fname.lower().endswith(".ttf")]
        if paths:
            fb = entry(f"medeff-fallback-{i}", paths[0])
            if fb:
                fallback.append(fb)
    out = {}
    for style, name, path in (("sans", "DejaVuSans", sans), ("bold", "DejaVuSans-Bold", bold),
                              ("mono", "DejaVuSansMono", mono)):
        first = entry(name, path)
        out[style] = ([first] if first else []) + fallback
    return out


def drawable(text: str, missing: set[int] | None = None) -> str:
    """``text`` with every character that no available font can draw replaced by ``[U+XXXX]``.

    Args:
        text: the text to draw.
        missing: collects the replaced code points (for one log line per report).
    """
    if core_font_text(text):
        return text
    covered = _fonts()[2]
    out = []
    for ch in text:
        if ord(ch) in covered or ch in "\n\t":
            out.append(ch)
        else:
            out.append(MARKER.format(ord(ch)))
            if missing is not None:
                missing.add(ord(ch))
    return "".join(out)


def pdf_rc(texts) -> dict:
    """matplotlib settings for a PDF page showing ``texts``: standard fonts when they suffice, else TrueType."""
    if all(core_font_text(t) for t in texts):
        return {"pdf.use14corefonts": True}
    sans, mono, _ = _fonts()
    return {"pdf.use14corefonts": False, "font.family": "sans-serif",
            "font.sans-serif": sans, "font.monospace": mono}


def sanitise_figure(fig, missing: set[int] | None = None) -> list[str]:
    """Replace undrawable characters in every text of ``fig`` (titles, labels, ticks, legends); returns the texts."""
    from matplotlib.text import Text

    texts = []
    for artist in fig.findobj(Text):
        text = artist.get_text()
        if text:
            fixed = drawable(text, missing)
            if fixed != text:
                artist.set_text(fixed)
            texts.append(fixed)
    return texts


def log_missing(missing: set[int], where: str) -> None:
    """One warning naming the characters no font could draw (replaced by markers)."""
    if missing:
        shown = ", ".join(MARKER.format(c) for c in sorted(missing)[:12])
        log.warning("%s: %d character(s) have no glyph in the available fonts and are shown as [U+XXXX] markers "
                    "(%s%s); the HTML report shows them as given. Install a font covering them (e.g. the Noto CJK "
                    "fonts) to draw them in the PDF.", where, len(missing), shown, ", ..." if len(missing) > 12 else "")
