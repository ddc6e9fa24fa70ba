"""Training logs written atomically: ``metrics.csv`` and ``hparams.yaml`` are complete or absent after a kill.

Lightning's CSV logger appends rows to ``metrics.csv`` and rewrites the whole file when a new metric name appears;
a SIGKILL in either leaves a cut row or a file that lost its earlier rows. Its ``hparams.yaml`` (CSV and
TensorBoard loggers) is written in place too. :func:`make_atomic` gives a CSV logger a writer that rewrites the
whole table through :mod:`medeff.utils.atomic` at every flush, and routes both loggers' ``hparams.yaml`` through an
atomic write. TensorBoard event files are append-only record logs with checksums (a cut last record is ignored
by the readers) and are left as they are.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers import tensorboard as tb_module
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from medeff.utils.atomic import atomic_path, write_text_atomic

__all__ = ["AtomicCSVWriter", "make_atomic", "atomic_hparams_yaml"]


def atomic_hparams_yaml(config_yaml: str | os.PathLike, hparams: Any, use_omegaconf: bool = True) -> None:
    """Lightning's ``save_hparams_to_yaml`` through a temporary file renamed onto ``config_yaml``."""
    with atomic_path(config_yaml) as tmp:
        save_hparams_to_yaml(str(tmp), hparams, use_omegaconf)


class AtomicCSVWriter(ExperimentWriter):
    """CSV experiment writer that keeps every row and rewrites ``metrics.csv`` atomically at each flush.

    Args:
        log_dir: the logger's version folder.
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir=log_dir)
        self._rows: list[dict[str, Any]] = []
        if os.path.isfile(self.metrics_file_path):  # a resumed run with a fixed version: keep its rows
            with open(self.metrics_file_path, newline="") as fh:
                reader = csv.DictReader(fh)
                self._rows = list(reader)
                self.metrics_keys = sorted(reader.fieldnames or [])

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        self._rows.extend(self.metrics)
        self.metrics = []
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(self._rows)
        write_text_atomic(self.metrics_file_path, buf.getvalue())

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        atomic_hparams_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)


def make_atomic(loggers: list[Any]) -> list[Any]:
    """Make the given Lightning loggers write their CSV and YAML files atomically; returns ``loggers``."""
    for logger in loggers:
        if isinstance(logger, CSVLogger) and logger._experiment is None:
            os.makedirs(logger.root_dir, exist_ok=True)
            logger._experiment = AtomicCSVWriter(log_dir=logger.log_dir)
        if isinstance(logger, TensorBoardLogger):
            tb_module.save_hparams_to_yaml = atomic_hparams_yaml  # used by TensorBoardLogger.save only
    return loggers
