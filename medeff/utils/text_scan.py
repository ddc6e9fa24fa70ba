"""Search produced files for strings, including inside compressed and binary containers.

Used to check that no patient identifier reaches any output: besides the raw bytes of each file, the search reads
the decompressed content of ``.gz`` files, the streams of PDF files and the strings stored in PyTorch checkpoints
(``.ckpt``/``.pt``: every string key and value, and the members of the checkpoint archive).
"""

from __future__ import annotations

import gzip
import re
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["decoded_texts", "find_strings"]

_PDF_STREAM = re.compile(rb"stream\r?\n(.*?)endstream", re.S)


def _strings(obj: Any, out: list[str]) -> list[str]:
    """Every string (keys and values) inside a nested structure; other non-numeric objects by their repr."""
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _strings(k, out)
            _strings(v, out)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            _strings(v, out)
    elif obj is not None and not isinstance(obj, (int, float, bool)) and type(obj).__name__ != "Tensor":
        out.append(repr(obj))
    return out


def decoded_texts(path: str | Path) -> list[bytes]:
    """The bytes of ``path`` plus its decoded forms (gzip content, PDF streams, checkpoint strings and members)."""
    path = Path(path)
    data = path.read_bytes()
    out = [data]
    if path.name.endswith(".gz"):
        out.append(gzip.decompress(data))
    if path.suffix == ".pdf":
        for m in _PDF_STREAM.finditer(data):
            try:
                out.append(zlib.decompress(m.group(1)))
            except zlib.error:
                pass
    if path.suffix in (".ckpt", ".pt") and zipfile.is_zipfile(path):
        import torch

        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        out.append("\n".join(_strings(ckpt, [])).encode())
        with zipfile.ZipFile(path) as z:
            out += [z.read(n) for n in z.namelist()]
    return out


def find_strings(root: str | Path, needles: Iterable[str]) -> list[tuple[str, str]]:
    """``(file relative to root, needle)`` for every needle found in any file under ``root`` (decoded forms too)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    needles = sorted(set(needles))
    found = []
    for p in files:
        texts = decoded_texts(p)
        for needle in needles:
            if any(needle.encode() in t for t in texts):
                found.append((str(p.relative_to(root)) if root.is_dir() else p.name, needle))
    return found
