"""Case ids of the dataset index, and the optional local mapping from pseudonyms back to the originals.

Case ids are running numbers (``case_0001``); group ids are keyed hashes (HMAC-SHA256 with a salt) of the
original patient/group key, made by :class:`medeff.utils.pseudonyms.Pseudonymiser` (``grp_<12 hex>``). Without a configured salt a random one is drawn per run and never stored, so the
pseudonyms cannot be reversed from the index. The mapping pseudonym -> original is written only when the user
asks for it, to the path they give, and never beside the index.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from medeff.errors import ConfigError
from medeff.utils.atomic import write_text_atomic

__all__ = ["case_ids", "check_mapping_path", "write_mapping"]


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
