"""One bad case in a prediction batch: report it and go on (``on_error=skip``), or stop (``on_error=stop``).

A case fails when its file cannot be read, has the wrong number of dimensions, holds NaN/inf voxels, or the
network gives non-finite outputs for it. With ``skip`` (the default in ``conf/predict.yaml``) the failure is logged
as a warning naming the case, the file and the reason, recorded for ``predictions.json`` / ``failed_cases.csv``,
and the batch goes on. Output problems (disk full, an existing output) are never skipped: they concern every case.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator, Mapping
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


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """Return ``x``; raise when it holds NaN or infinite values (a silent NaN prediction is never written).

    Raises:
        InputError: naming ``what``.
    """
    if not bool(torch.isfinite(x).all()):
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

    Raises:
        ConfigError: ``on_error`` is neither.
    """

    def __init__(self, on_error: str = "skip") -> None:
        self.on_error = look_up(str(on_error), ON_ERROR, what="on_error value", key="on_error")
        self.failed: list[dict[str, str]] = []

    def __len__(self) -> int:
        return len(self.failed)

    @contextlib.contextmanager
    def case(self, rec: Mapping[str, Any]) -> Iterator[None]:
        """Run the body for one case; a failure is recorded and skipped, or re-raised with ``stop``.

        Raises:
            InputError: with ``stop``, the case failed (the original error is chained).
            OutputWriteError, OutputExistsError: always re-raised (they are not about the case).
        """
        try:
            yield
        except (OutputWriteError, OutputExistsError):
            raise
        except Exception as exc:  # every per-case failure is reported, never swallowed silently
            cid, image = str(rec.get("case_id", "?")), str(rec.get("image", "?"))
            reason = _reason(exc)
            if self.on_error == "stop":
                root = _root_cause(exc)
                if isinstance(root, MedeffError):
                    raise root from None  # the medeff error itself (it names the file), without the wrappers
                raise InputError(f"Case '{cid}' ('{image}') failed: {reason}",
                                 hint="fix or remove that input, or pass on_error=skip to report failing cases and "
                                      "go on.", path=image) from exc
            log.warning("Case %s ('%s') failed and is skipped: %s", cid, image, reason)
            self.failed.append({"case_id": cid, "image": image, "reason": reason})

    def raise_if_all_failed(self, n_cases: int, out_dir: Path, overwrite: bool) -> None:
        """Write the failure list and raise when no case is left to predict.

        Raises:
            InputError: every one of ``n_cases`` failed.
        """
        if n_cases and len(self.failed) >= n_cases:
            self.write(out_dir, overwrite)
            first = "; ".join(f"{f['case_id']}: {f['reason']}" for f in self.failed[:3])
            raise InputError(f"All {n_cases} case(s) failed ({first}).",
                             hint=f"see {out_dir / FAILED_CSV} and the log for every case and its reason.",
                             path=str(out_dir / FAILED_CSV))

    def write(self, out_dir: Path, overwrite: bool) -> Path | None:
        """Write ``failed_cases.csv`` (case_id, image, reason) when any case failed; return its path."""
        if not self.failed:
            return None
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["case_id", "image", "reason"])
        writer.writeheader()
        writer.writerows(self.failed)
        return write_text_atomic(Path(out_dir) / FAILED_CSV, buf.getvalue(), overwrite=overwrite)
