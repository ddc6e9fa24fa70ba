"""Exception types that carry a user-facing message.

Every error medeff raises on bad input says three things: *which* file or key, *what* was wrong and
*how* to fix it. The CLI prints such errors as one paragraph without a traceback and exits with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "MedeffError",
    "InputError",
    "DicomSeriesError",
    "ImageReadError",
    "NonFiniteImageError",
    "IndexValidationError",
    "ConfigError",
    "CheckpointError",
    "OutputExistsError",
    "OutputWriteError",
]


class MedeffError(Exception):
    """Base class for errors that are the user's to fix (bad input, bad config), not bugs.

    Args:
        message: what went wrong, naming the file or key.
        hint: how to fix it; appended as "Fix: ..." when given.
        path: the offending file or folder, if any.
    """

    def __init__(self, message: str, *, hint: str | None = None, path: str | None = None) -> None:
        self.message = message
        self.hint = hint
        self.path = None if path is None else str(path)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text} Fix: {self.hint}"
        return text


class InputError(MedeffError, ValueError):
    """An input file or argument is unusable."""


class ImageReadError(InputError):
    """An image file cannot be read or is not a valid image."""


class NonFiniteImageError(ImageReadError):
    """An image holds NaN or infinite voxel values (found in the stored data, before any windowing or casting)."""


class DicomSeriesError(ImageReadError):
    """A DICOM series is refused (missing slices, tilt without repair, mixed geometry, ...)."""


class IndexValidationError(InputError):
    """A dataset index holds invalid cases; the message lists every offending case."""


class ConfigError(MedeffError, ValueError):
    """A configuration key or value is invalid; the message names the key and the valid options."""


class CheckpointError(MedeffError):
    """A checkpoint is missing, corrupt, untrusted or belongs to another task or label map."""


class OutputExistsError(MedeffError, FileExistsError):
    """An output already exists and overwriting was not asked for."""


class OutputWriteError(MedeffError, OSError):
    """An output cannot be written (folder not writable, read-only file system, disk full); nothing was left
    under the output's name."""


def unpickling_reason(exc: BaseException) -> str:
    """Why a safe (``weights_only``) ``torch.load`` refused a file, in medeff's words.

    torch's message advises re-running with the unsafe setting; medeff never repeats that advice (a pickled object
    can run code when loaded), so only the offending global, or the unpickler's own complaint, is kept.
    """
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours part of its message
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it refers to the Python object {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?:\.\s|\.?$|\n)", text)
    if found and "weights_only" not in found.group(1):
        return found.group(1).strip()
    return "it holds pickled Python objects"
