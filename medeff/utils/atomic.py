"""Atomic file writes: an output is either complete or absent, never half written.

Writers create a temporary file in the destination folder, flush and fsync it, then ``os.replace``
it over the final name (atomic on POSIX within one file system). A crash or SIGKILL at any point
leaves at most a stray ``.tmp-*`` file, never a truncated output with the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from medeff.errors import OutputExistsError

__all__ = ["atomic_path", "atomic_open", "write_text_atomic", "write_json_atomic", "check_writable"]


def check_writable(path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Check that ``path`` may be written, creating its parent folder.

    Raises:
        OutputExistsError: the file exists and ``overwrite`` is False.
        PermissionError: the parent folder is not writable (with a message naming it).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"Output '{path}' already exists.", hint="choose another output path or pass --overwrite.", path=str(path)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"Output folder '{path.parent}' is not writable; choose a folder you can write to.")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on clean exit it is renamed onto ``path``.

    The temporary name keeps the final suffix (``.nii.gz`` etc.) so libraries that pick a format
    from the file name write the right format. On error the temporary file is removed.
    """
    path = check_writable(path, overwrite=overwrite)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, overwrite: bool = True, **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` atomically when closed without error."""
    if "r" in mode or "a" in mode:
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not supported (use 'w' or 'wb').")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_open(path, "w", overwrite=overwrite, encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, overwrite: bool = True, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (NaN is written as null-safe ``NaN`` per json module)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n",
                             overwrite=overwrite)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
