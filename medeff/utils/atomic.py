"""Atomic file writes: an output is either complete or absent, never half written.

Writers create a temporary file in the destination folder, flush and fsync it, then ``os.replace``
it over the final name (atomic on POSIX within one file system). A crash or SIGKILL at any point
leaves at most a stray ``.tmp-*`` file, never a truncated output with the final name.

The temporary file is created private (``mkstemp``: mode 0600); before the rename it gets the mode any
ordinary new file would get, ``0666 & ~umask`` (0644 under the usual umask 022, 0600 under 077), so outputs
are shared exactly as the user's umask says.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from medeff.errors import OutputExistsError, OutputWriteError

__all__ = ["atomic_path", "atomic_open", "write_text_atomic", "write_json_atomic", "check_writable", "write_error",
           "current_umask"]


def check_writable(path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Check that ``path`` may be written, creating its parent folder.

    Raises:
        OutputExistsError: the file exists and ``overwrite`` is False.
        OutputWriteError: the parent folder cannot be created or is not writable (the message names it).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"Output '{path}' already exists.", hint="choose another output path or pass --overwrite "
            "(overwrite=true for commands configured by key=value).", path=str(path)
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from exc
    if not os.access(path.parent, os.W_OK):
        raise OutputWriteError(f"Cannot write '{path}': the folder '{path.parent}' is not writable.",
                               hint="choose an output folder you can write to, or fix its permissions.",
                               path=str(path))
    return path


def write_error(path: str | os.PathLike, exc: OSError) -> OutputWriteError:
    """An :class:`OutputWriteError` for an ``OSError`` raised while writing ``path``, with a fitting fix."""
    import errno

    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"free space on the disk holding '{Path(path).parent}' or write to another disk, then run again."
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "choose an output folder you can write to (not read-only), or fix its permissions."
    else:
        hint = "check the output folder and the disk, then run again."
    return OutputWriteError(f"Cannot write '{path}': {reason}; nothing was written under that name.", hint=hint,
                            path=str(path))


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # no read-only query elsewhere: set the strictest mask for the instant it takes
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on clean exit it is renamed onto ``path``.

    The temporary name keeps the final suffix (``.nii.gz`` etc.) so libraries that pick a format
    from the file name write the right format. On error the temporary file is removed.
    """
    path = check_writable(path, overwrite=overwrite)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp's 0600 -> what open() would have given
        _fsync_file(tmp_path)
        if not overwrite and path.exists():  # appeared while this output was being written
            raise OutputExistsError(f"Output '{path}' already exists.", hint="choose another output path or pass "
                                    "--overwrite (overwrite=true).", path=str(path))
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except (OutputWriteError, OutputExistsError):
        raise
    except OSError as exc:  # disk full, read-only file system, permissions changed while writing
        raise write_error(path, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


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
