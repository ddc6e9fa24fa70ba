"""One bad case in a prediction batch: report it and go on (``on_error=skip``), or stop (``on_error=stop``).

A case fails when its file cannot be read, has the wrong number of dimensions, holds NaN/inf voxels, or the
network gives non-finite outputs for it. With ``skip`` (the default in ``conf/predict.yaml``) the failure is logged
as a warning naming the case, the file and the reason, recorded for ``predictions.json`` / ``failed_cases.csv``,
and the batch goes on. Output problems (disk full, an existing output) are never skipped: they concern every case.

A case can also be *partial*: predicted, but a requested output could not be written (e.g. a DICOM SEG for a series
that was resampled when read). It is listed like a failed case, with ``outcome`` ``partial``, and its other outputs
stay.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from medeff.errors import InputError, MedeffError, OutputExistsError, OutputWriteError
from medeff.utils.atomic import write_text_atomic
from medeff.utils.logging import get_logger
from medeff.utils.options import look_up

__all__ = ["ON_ERROR", "CaseFailures", "check_finite"]

log = get_logger(__name__)
ON_ERROR = ("skip", "stop")
FAILED_CSV = "failed_cases.csv"
FIELDS = ["case_id", "image", "reason", "outcome"]


def check_finite(x, what: str):
    """Return ``x`` (a tensor or array); raise when it holds NaN or infinite values (a silent NaN prediction is
    never written, and raw voxels are checked before a window could clip them).

    Raises:
        InputError: naming ``what``.
    """
    if isinstance(x, torch.Tensor):
        finite = bool(torch.isfinite(x).all())
    else:
        import numpy as np

        arr = np.asarray(x)
        finite = arr.dtype.kind not in "fc" or bool(np.isfinite(arr).all())
    if not finite:
        raise InputError(f"{what} holds NaN or infinite values.",
                         hint="fix the image (replace NaN/inf voxels) or leave the case out.")
    return x


def _root_cause(exc: BaseException) -> BaseException:
    """The medeff error inside MONAI's "applying transform ..." wrappers, else the innermost cause."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    return next((e for e in chain if isinstance(e, MedeffError)), chain[-1])


def _reason(exc: BaseException) -> str:
    exc = _root_cause(exc)
    if isinstance(exc, MedeffError):
        text = exc.message
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return " ".join(str(text).split())[:400]


class CaseFailures:
    """Collects the cases that failed during one prediction run.

    Args:
        on_error: ``skip`` (report and go on) or ``stop`` (raise at the first failing case).
        redact: applied to the file name and reason of every failure (input names withheld).

    Raises:
        ConfigError: ``on_error`` is neither.
    """

    def __init__(self, on_error: str = "skip", redact: Callable[[str], str] | None = None) -> None:
        self.on_error = look_up(str(on_error), ON_ERROR, what="on_error value", key="on_error")
        self.redact = redact or (lambda text: text)
        self.failed: list[dict[str, str]] = []
        self.last: dict[str, str] | None = None  # the failure recorded by the latest ``case`` block, if any

    def __len__(self) -> int:
        return len(self.failed)

    @contextlib.contextmanager
    def case(self, rec: Mapping[str, Any]) -> Iterator[None]:
        """Run the body for one case; a failure is recorded and skipped, or re-raised with ``stop``.

        Raises:
            InputError: with ``stop``, the case failed (the original error is chained).
            OutputWriteError, OutputExistsError: always re-raised (they are not about the case).
        """
        self.last = None
        try:
            yield
        except (OutputWriteError, OutputExistsError):
            raise
        except Exception as exc:  # every per-case failure is reported, never swallowed silently
            cid, image = str(rec.get("case_id", "?")), self.redact(str(rec.get("image", "?")))
            reason = self.redact(_reason(exc))
            if self.on_error == "stop":
                root = _root_cause(exc)
                if isinstance(root, MedeffError):
                    raise root from None  # the medeff error itself (it names the file), without the wrappers
                raise InputError(f"Case '{cid}' ('{image}') failed: {reason}",
                                 hint="fix or remove that input, or pass on_error=skip to report failing cases and "
                                      "go on.", path=image) from exc
            log.warning("Case %s ('%s') failed and is skipped: %s", cid, image, reason)
            self.last = {"case_id": cid, "image": image, "reason": reason, "outcome": "failed"}
            self.failed.append(self.last)

    def fail(self, rec: Mapping[str, Any], reason: str, outcome: str = "failed") -> dict[str, str]:
        """Record a failure found outside a ``case`` block (``outcome``: ``failed`` or ``partial``).

        Raises:
            InputError: with ``stop``.
        """
        cid, image = str(rec.get("case_id", "?")), self.redact(str(rec.get("image", "?")))
        reason = self.redact(" ".join(str(reason).split())[:400])
        if self.on_error == "stop":
            raise InputError(f"Case '{cid}' ('{image}') {'is incomplete' if outcome == 'partial' else 'failed'}: "
                             f"{reason}", hint="fix or remove that input, or pass on_error=skip to report failing "
                                               "cases and go on.", path=image)
        log.warning("Case %s ('%s') %s: %s", cid, image,
                    "is partial (a requested output is missing)" if outcome == "partial" else "failed", reason)
        entry = {"case_id": cid, "image": image, "reason": reason, "outcome": outcome}
        self.failed.append(entry)
        return entry

    def add(self, entry: Mapping[str, str]) -> None:
        """Carry over a failure recorded earlier (a resumed run)."""
        self.failed.append({k: str(entry.get(k, "")) for k in FIELDS})

    @property
    def n_failed(self) -> int:
        """Cases that failed outright (partial cases have outputs)."""
        return sum(1 for f in self.failed if f.get("outcome", "failed") == "failed")

    def all_failed_error(self, n_cases: int, out_dir: Path) -> InputError | None:
        """The error to raise when every one of ``n_cases`` failed outright, else None."""
        if n_cases and self.n_failed >= n_cases:
            first = "; ".join(f"{f['case_id']}: {f['reason']}" for f in self.failed[:3])
            return InputError(f"All {n_cases} case(s) failed ({first}).",
                              hint=f"see {out_dir / FAILED_CSV} and the log for every case and its reason.",
                              path=str(out_dir / FAILED_CSV))
        return None

    def raise_if_all_failed(self, n_cases: int, out_dir: Path, overwrite: bool) -> None:
        """Write the failure list and raise when no case is left to predict.

        Raises:
            InputError: every one of ``n_cases`` failed.
        """
        error = self.all_failed_error(n_cases, out_dir)
        if error is not None:
            self.write(out_dir, overwrite)
            raise error

    def csv_text(self) -> str:
        """``failed_cases.csv`` (case_id, image, reason, outcome)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({k: f.get(k, "failed" if k == "outcome" else "") for k in FIELDS} for f in self.failed)
        return buf.getvalue()

    def write(self, out_dir: Path, overwrite: bool) -> Path | None:
        """Write ``failed_cases.csv`` when any case failed; return its path."""
        if not self.failed:
            return None
        return write_text_atomic(Path(out_dir) / FAILED_CSV, self.csv_text(), overwrite=overwrite)
