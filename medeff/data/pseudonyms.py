"""Pseudonyms for cases and patient groups, and the optional local mapping back to the originals.

Case ids are running numbers (``case_0001``); group ids are keyed hashes (HMAC-SHA256 with a salt) of the
original patient/group key. Without a configured salt a random one is drawn per run and never stored, so the
pseudonyms cannot be reversed from the index. The mapping pseudonym -> original is written only when the user
asks for it, to the path they give, and never beside the index.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

from medeff.errors import ConfigError
from medeff.utils.atomic import write_text_atomic

__all__ = ["Pseudonymiser", "case_ids", "check_mapping_path", "write_mapping"]


class Pseudonymiser:
    """Keyed-hash pseudonyms for group keys.

    Args:
        salt: secret salt; None draws a random one (pseudonyms then differ between runs).
        prefix: prefix of every pseudonym.
        length: number of hex digits kept.
    """

    def __init__(self, salt: str | None = None, *, prefix: str = "grp_", length: int = 12) -> None:
        self._key = (salt if salt is not None else secrets.token_hex(16)).encode("utf-8")
        self.prefix = prefix
        self.length = int(length)

    def __call__(self, original: str) -> str:
        digest = hmac.new(self._key, str(original).encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{self.prefix}{digest[: self.length]}"

    def map(self, originals: Iterable[str]) -> dict[str, str]:
        """original -> pseudonym for every distinct original.

        Raises:
            ConfigError: two originals collide (raise ``pseudonym.length``).
        """
        out: dict[str, str] = {}
        seen: dict[str, str] = {}
        for o in originals:
            if o in out:
                continue
            p = self(o)
            if p in seen:
                raise ConfigError(
                    "Two patient groups received the same pseudonym.", hint="raise pseudonym.length (e.g. to 16)."
                )
            seen[p] = o
            out[o] = p
        return out


def case_ids(n: int, prefix: str = "case_") -> list[str]:
    """Running-number case ids ``case_0001 ..`` (at least 4 digits)."""
    width = max(4, len(str(n)))
    return [f"{prefix}{i + 1:0{width}d}" for i in range(n)]


def check_mapping_path(path: str | os.PathLike, index_path: str | os.PathLike) -> Path:
    """Refuse a mapping path that is the index itself or lies in the index's folder (the outputs).

    Raises:
        ConfigError: the mapping would sit among the outputs.
    """
    path = Path(path).expanduser()
    index_path = Path(index_path).expanduser()
    if path.resolve() == index_path.resolve() or path.resolve().parent == index_path.resolve().parent:
        raise ConfigError(
            f"The pseudonym mapping '{path}' would be written beside the index '{index_path}'. The mapping "
            "re-identifies patients and must stay out of shared outputs.",
            hint="give pseudonym.mapping_out a path in a private folder outside the output folder.",
        )
    return path


def write_mapping(path: str | os.PathLike, rows: Sequence[tuple[str, str, str]], *,
                  index_path: str | os.PathLike) -> Path:
    """Write the local mapping ``kind,pseudonym,original`` (CSV) atomically.

    Args:
        path: where to write, as given by the user.
        rows: ``(kind, pseudonym, original)`` with kind "case" or "group".
        index_path: the index being written; the mapping may not sit in the same folder.

    Raises:
        ConfigError: the mapping path is the index itself or lies in the index's folder.
    """
    path = check_mapping_path(path, index_path)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["kind", "pseudonym", "original"])
    w.writerows(rows)
    return write_text_atomic(path, buf.getvalue())
