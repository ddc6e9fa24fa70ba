"""A small, fast reader for a handful of DICOM header tags (little endian transfer syntaxes).

Scanning a CT series with pydicom costs a few milliseconds per file, mostly in generic value conversion
and sequence parsing; medeff needs about twenty top-level tags. This walker reads the file meta and the
dataset element by element, skips every value it does not need (sequences of defined or undefined length
included) and stops at the pixel data, noting its byte offset. Anything unusual (no preamble, big endian,
deflated, a malformed stream) returns ``None`` and the caller falls back to pydicom.
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["read_tags", "FastHeader"]

_CHUNK = 1 << 16
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_IMPLICIT = "1.2.840.10008.1.2"
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # uncompressed little endian: pixel offset is usable
_OTHER = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflated: left to pydicom
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class _NeedMore(Exception):
    """The buffer ended inside the header: read the rest of the file and walk again."""


class FastHeader:
    """Raw values of the requested tags plus the transfer syntax and pixel data location."""

    __slots__ = ("values", "transfer_syntax", "implicit", "pixel_offset", "pixel_length", "truncated")

    def __init__(self) -> None:
        self.truncated = False  # the file ends inside an element: a cut copy, not a complete object
        self.values: dict[int, bytes] = {}
        self.transfer_syntax = ""
        self.implicit = False
        self.pixel_offset: int | None = None
        self.pixel_length: int | None = None

    def text(self, tag: int) -> str | None:
        """String value (UI, CS, LO, DS, IS, ...) with padding removed, or None when absent."""
        raw = self.values.get(tag)
        return None if raw is None else raw.decode("latin-1").strip("\x00 ")

    def numbers(self, tag: int) -> list[float] | None:
        """Backslash-separated decimal values (DS/IS), or None when absent or unparsable."""
        text = self.text(tag)
        if not text:
            return None
        try:
            return [float(v) for v in text.split("\\")]
        except ValueError:
            return None

    def ushort(self, tag: int) -> int | None:
        """Unsigned short (US) value, or None when absent."""
        raw = self.values.get(tag)
        return None if raw is None or len(raw) < 2 else _U16.unpack_from(raw)[0]


def read_tags(path: str | Path, wanted: frozenset[int]) -> FastHeader | None:
    """Read ``wanted`` top-level tags of a DICOM Part 10 file; None when the file needs the general parser.

    Args:
        path: the file.
        wanted: tags as ``group << 16 | element`` integers.

    Returns:
        :class:`FastHeader`, or None for non-DICOM files, big endian / deflated syntaxes or malformed streams.
    """
    with open(path, "rb") as fh:
        buf = fh.read(_CHUNK)
        if len(buf) < 132 or buf[128:132] != b"DICM":
            return None
        try:
            return _walk(buf, wanted)
        except _NeedMore:
            buf += fh.read()
        except (struct.error, ValueError, IndexError):
            return None
    try:
        return _walk(buf, wanted, complete=True)
    except (_NeedMore, struct.error, ValueError, IndexError):
        return None


def _walk(buf: bytes, wanted: frozenset[int], complete: bool = False) -> FastHeader | None:
    out = FastHeader()
    end = len(buf)
    pos = 132
    # file meta information: always explicit VR little endian
    while pos + 8 <= end and _U16.unpack_from(buf, pos)[0] == 0x0002:
        tag, length, start = _explicit_header(buf, pos)
        if tag == 0x00020010:
            out.transfer_syntax = buf[start:start + length].decode("latin-1").strip("\x00 ")
        pos = start + length
    if not out.transfer_syntax or out.transfer_syntax in _OTHER:
        return None
    implicit = out.implicit = out.transfer_syntax == _IMPLICIT  # compressed syntaxes are explicit VR LE
    while True:
        if pos + 8 > end:
            if complete:
                out.truncated = pos != end
                return out  # no pixel data
            raise _NeedMore
        tag, length, start = _implicit_header(buf, pos) if implicit else _explicit_header(buf, pos)
        if tag == PIXEL_DATA:
            if length != 0xFFFFFFFF and out.transfer_syntax in _NATIVE:
                out.pixel_offset, out.pixel_length = start, length
            return out
        if length == 0xFFFFFFFF:
            nested_implicit = implicit or buf[pos + 4:pos + 6] == b"UN"
            pos = _skip_sequence(buf, start, nested_implicit, complete)
            continue
        if start + length > end:
            if not complete:
                raise _NeedMore
            out.truncated = True
            return out
        if tag in wanted:
            out.values[tag] = buf[start:start + length]
        pos = start + length


def _explicit_header(buf: bytes, pos: int) -> tuple[int, int, int]:
    group, elem = struct.unpack_from("<HH", buf, pos)
    tag = group << 16 | elem
    if group == 0xFFFE:  # item / delimiters have no VR
        return tag, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    vr = buf[pos + 4:pos + 6]
    if not vr.isalpha():
        raise ValueError("not an explicit VR element")
    if vr in _LONG_VRS:
        return tag, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    return tag, _U16.unpack_from(buf, pos + 6)[0], pos + 8


def _implicit_header(buf: bytes, pos: int) -> tuple[int, int, int]:
    group, elem, length = struct.unpack_from("<HHI", buf, pos)
    return group << 16 | elem, length, pos + 8


def _skip_sequence(buf: bytes, pos: int, implicit: bool, complete: bool) -> int:
    """Skip an undefined-length sequence starting at its first item; return the position after its delimiter."""
    end = len(buf)
    while True:
        if pos + 8 > end:
            if complete:
                raise ValueError("sequence runs past the end of the file")
            raise _NeedMore
        tag, length = _implicit_header(buf, pos)[:2]
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise ValueError(f"unexpected tag {tag:08x} in a sequence")
        if length != 0xFFFFFFFF:
            pos += length
            continue
        pos = _skip_item(buf, pos, implicit, complete)


def _skip_item(buf: bytes, pos: int, implicit: bool, complete: bool) -> int:
    end = len(buf)
    while True:
        if pos + 8 > end:
            if complete:
                raise ValueError("item runs past the end of the file")
            raise _NeedMore
        tag, length, start = _implicit_header(buf, pos) if implicit else _explicit_header(buf, pos)
        if tag == _ITEM_END:
            return start
        if length == 0xFFFFFFFF:
            pos = _skip_sequence(buf, start, implicit or buf[pos + 4:pos + 6] == b"UN", complete)
        else:
            pos = start + length
