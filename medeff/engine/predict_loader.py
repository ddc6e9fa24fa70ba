"""Cases read ahead of the network: ``medeff predict`` reads and preprocesses the next case while the current one is
segmented, through a torch ``DataLoader`` over the cases (``num_workers`` of ``conf/predict.yaml``).

Each item is ``(position, preprocessed case or None, error or None)``: a case that cannot be read yields its error
instead of stopping the loader, so it fails on its own (``on_error``) in the predicting process, in case order.
With ``num_workers=0`` the cases are read in the predicting process, one after the other; the masks are the same
either way (the preprocessing is deterministic). Workers are forked (also on macOS, whose default is spawn), so the
preprocessing needs no pickling and the redaction of names in log lines carries over; where a platform cannot fork
(Windows), cases are read in the predicting process.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset

from medeff.errors import ConfigError
from medeff.utils.logging import get_logger

__all__ = ["resolve_predict_workers", "case_loader"]

log = get_logger(__name__)


def resolve_predict_workers(value: Any) -> int:
    """``num_workers``: a count >= 0, or ``auto`` = the usable cores minus one, at most 2 (reading one or two cases
    ahead keeps the network busy; each worker holds a preprocessed case in memory).

    Raises:
        ConfigError: neither a count >= 0 nor ``auto``.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        from medeff.utils.threads import available_cores

        return min(2, max(available_cores() - 1, 0))  # affinity capped by the cgroup quota
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0 or isinstance(value, bool) or (isinstance(value, float) and value != n):
        raise ConfigError(f"num_workers must be a count >= 0 or auto, got {value!r}.",
                          hint="e.g. num_workers=auto (cores - 1, at most 2), 1, or 0 to read cases in the "
                               "predicting process.")
    return n


class _Cases(Dataset):
    def __init__(self, records: Sequence[dict[str, Any]], prepare: Callable[[dict[str, Any]], Any]) -> None:
        self.records, self.prepare = list(records), prepare

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        try:
            return i, self.prepare(self.records[i]), None
        except Exception as exc:  # handed to the predicting process, which fails this case only
            return i, None, _portable(exc)


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (the way back from a worker), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        first = (str(exc).strip().splitlines() or [""])[0]
        return RuntimeError(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def _one(item):
    return item


def case_loader(records: Sequence[dict[str, Any]], prepare: Callable[[dict[str, Any]], Any],
                num_workers: int) -> DataLoader:
    """A loader yielding ``(position, prepare(record) or None, error or None)`` in the order of ``records``.

    Args:
        records: the cases.
        prepare: reads and preprocesses one case (runs in a worker process when ``num_workers`` > 0).
        num_workers: worker processes; 0 reads in this process. Each worker reads one case ahead.
    """
    import multiprocessing

    extra: dict[str, Any] = {}
    if num_workers > 0:
        if "fork" in multiprocessing.get_all_start_methods():
            # forked workers inherit the preprocessing (which need not pickle) and the log handlers' redaction
            extra = {"prefetch_factor": 1, "persistent_workers": False, "multiprocessing_context": "fork"}
        else:  # no fork (Windows): the cases are read in this process
            log.info("num_workers=%d: this platform cannot fork; cases are read in the predicting process.",
                     num_workers)
            num_workers = 0
    return DataLoader(_Cases(records, prepare), batch_size=None, shuffle=False, num_workers=num_workers,
                      collate_fn=_one, **extra)
