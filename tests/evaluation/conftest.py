"""Fixtures of the evaluation tests: ``pdf_text`` turns a report PDF back into its text, for text set in the standard
PDF fonts (plain strings) and in embedded TrueType fonts (glyph codes, decoded through the fonts' ToUnicode maps), so
that searches for words or identifiers see every page.

With pypdfium2 installed (the ``test`` extra), PDFium extracts the text; without it a small parser of uncompressed or
Flate streams does. Either way the text is returned three times: as extracted (one line per text line), with the lines
joined by spaces (a table cell wrapped over two lines reads as one phrase) and joined with nothing (a long word split
over two lines reads as one word), so searches for words and identifiers are not defeated by line breaks."""

from __future__ import annotations

import re
import zlib

import pytest

_OBJ = re.compile(rb"(\d+) 0 obj(.*?)endobj", re.S)
_STREAM = re.compile(rb"stream\r?\n(.*?)(?:\r?\n)?endstream", re.S)
_TOKEN = re.compile(rb"/([A-Za-z0-9+]+) [\d.]+ Tf|\((?:\\.|[^\\()])*\)|\bET\b", re.S)


def _objects(data: bytes) -> dict[int, tuple[bytes, bytes | None]]:
    out = {}
    for m in _OBJ.finditer(data):
        body = m.group(2)
        sm = _STREAM.search(body)
        stream = None
        if sm:
            try:
                stream = zlib.decompress(sm.group(1))
            except zlib.error:
                stream = sm.group(1)
        out[int(m.group(1))] = (body.split(b"stream", 1)[0], stream)
    return out


def _cmap(text: bytes) -> dict[int, str]:
    def uni(h: bytes) -> str:
        return bytes.fromhex(h.decode()).decode("utf-16-be", errors="replace")

    out = {}
    for block in re.findall(rb"beginbfchar(.*?)endbfchar", text, re.S):
        for src, dst in re.findall(rb"<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>", block):
            out[int(src, 16)] = uni(dst)
    for block in re.findall(rb"beginbfrange(.*?)endbfrange", text, re.S):
        for lo, hi, rest in re.findall(rb"<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>\s*(\[[^\]]*\]|<[0-9a-fA-F]+>)", block):
            lo, hi = int(lo, 16), int(hi, 16)
            if rest.startswith(b"["):
                for i, dst in enumerate(re.findall(rb"<([0-9a-fA-F]+)>", rest)):
                    out[lo + i] = uni(dst)
            else:
                start = bytes.fromhex(rest[1:-1].decode())
                for i in range(hi - lo + 1):
                    code = int.from_bytes(start, "big") + i
                    out[lo + i] = code.to_bytes(len(start), "big").decode("utf-16-be", errors="replace")
    return out


def _unescape(lit: bytes) -> bytes:
    body = lit[1:-1]
    out = bytearray()
    i = 0
    simple = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("f"): b"\f"}
    while i < len(body):
        c = body[i]
        if c == 0x5C and i + 1 < len(body):
            nxt = body[i + 1]
            m = re.match(rb"[0-7]{1,3}", body[i + 1:i + 4])
            if m:
                out.append(int(m.group(0), 8) & 0xFF)
                i += 1 + len(m.group(0))
                continue
            out += simple.get(nxt, bytes([nxt]))
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


def extract_pdf_text(data: bytes) -> str:
    """The text of every page of a matplotlib PDF, one line per text object."""
    objs = _objects(data)
    fonts: dict[bytes, dict[int, str] | None] = {}  # resource name -> ToUnicode map (None: one-byte WinAnsi font)
    for head, _ in objs.values():
        for name, num in re.findall(rb"/(F[\d+]+) (\d+) 0 R", head):
            fhead = objs.get(int(num), (b"", None))[0]
            tu = re.search(rb"/ToUnicode (\d+) 0 R", fhead)
            fonts[name] = _cmap(objs[int(tu.group(1))][1] or b"") if tu else None
    lines, current, font = [], [], None
    for _, stream in objs.values():
        if not stream or b"BT" not in stream or b"Tf" not in stream:
            continue
        for m in _TOKEN.finditer(stream):
            tok = m.group(0)
            if m.group(1):
                font = fonts.get(m.group(1))
            elif tok == b"ET":
                lines.append("".join(current))
                current = []
            else:
                raw = _unescape(tok)
                if font is None:
                    current.append(raw.decode("cp1252", errors="replace"))
                else:
                    width = 1 if font and max(font) < 256 else 2  # one-byte subsets (ReportLab) or CID fonts
                    current.append("".join(font.get(int.from_bytes(raw[i:i + width], "big"), "\ufffd")
                                           for i in range(0, len(raw) - width + 1, width)))
    return "\n".join(lines)


def _pdfium_text(data: bytes) -> str | None:
    try:
        import pypdfium2 as pdfium
    except ImportError:
        return None
    pdf = pdfium.PdfDocument(data)
    try:
        return "\n".join(pdf[i].get_textpage().get_text_range() for i in range(len(pdf)))
    finally:
        pdf.close()


def pdf_page_text(data: bytes) -> str:
    """The text of a report PDF, with joined variants (see the module docstring)."""
    text = _pdfium_text(data)
    if text is None:
        text = extract_pdf_text(data)
    lines = [ln.strip() for ln in text.replace("\r", "").split("\n")]
    return "\n".join([text, " ".join(lines), "".join(lines)])


@pytest.fixture()
def pdf_text():
    """``pdf_text(bytes) -> str``: the text of a report PDF (see the module docstring)."""
    return pdf_page_text
