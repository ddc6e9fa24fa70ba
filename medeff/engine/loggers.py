"""Training logs written atomically: ``metrics.csv`` and ``hparams.yaml`` are complete or absent after a kill.

Lightning's CSV logger appends rows to ``metrics.csv`` and rewrites the whole file when a new metric name appears;
a SIGKILL in either leaves a cut row or a file that lost its earlier rows. Its ``hparams.yaml`` (CSV and
TensorBoard loggers) is written in place too. ``medeff train`` therefore builds, wherever the config names
``lightning.pytorch.loggers.CSVLogger`` or ``TensorBoardLogger``, the medeff logger of the same name and arguments
(:data:`ATOMIC_LOGGERS`):

* :class:`AtomicCSVLogger` is a logger of its own on Lightning's public ``Logger`` interface, with the folder
  layout and the file format of ``CSVLogger`` (``save_dir/name/version_N/metrics.csv`` and ``hparams.yaml``); it
  keeps every row and rewrites the whole table through :mod:`medeff.utils.atomic` at each save.
* :class:`AtomicTensorBoardLogger` is Lightning's ``TensorBoardLogger`` whose ``save`` (the public method that
  writes ``hparams.yaml``) writes it atomically. TensorBoard event files are append-only record logs with
  checksums (a cut last record is ignored by the readers) and are left as they are.
"""

from __future__ import annotations

import csv
import io
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from medeff.utils.atomic import atomic_path, write_text_atomic

__all__ = ["AtomicCSVLogger", "AtomicTensorBoardLogger", "ATOMIC_LOGGERS", "atomic_hparams_yaml"]

#: Lightning logger named by a config -> the medeff logger ``medeff train`` builds in its place (same arguments)
ATOMIC_LOGGERS = {
    "lightning.pytorch.loggers.CSVLogger": "medeff.engine.loggers.AtomicCSVLogger",
    "lightning.pytorch.loggers.TensorBoardLogger": "medeff.engine.loggers.AtomicTensorBoardLogger",
}


def atomic_hparams_yaml(config_yaml: str | os.PathLike, hparams: Any, use_omegaconf: bool = True) -> None:
    """Lightning's ``save_hparams_to_yaml`` through a temporary file renamed onto ``config_yaml``."""
    with atomic_path(config_yaml) as tmp:
        save_hparams_to_yaml(str(tmp), hparams, use_omegaconf)


def _plain_params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return dict(vars(params))
    return dict(params) if isinstance(params, Mapping) else {"params": params}


class AtomicCSVLogger(Logger):
    """Log metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml``, both written atomically.

    Same arguments, folders and file format as Lightning's ``CSVLogger``: one row per ``log_metrics`` call with a
    ``step`` column, columns added in sorted order as new metric names appear.

    Args:
        save_dir: parent folder.
        name: experiment sub-folder (None or "" for none).
        version: ``version_<N>`` sub-folder (int), a folder name (str), or None for the next free ``N``.
        prefix: put before every metric name (joined with ``-``).
        flush_logs_every_n_steps: also save every N steps (the trainer saves after each logging call anyway).
    """

    LOGGER_JOIN_CHAR = "-"
    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, save_dir: str | os.PathLike, name: str | None = "lightning_logs",
                 version: int | str | None = None, prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._prefix = prefix
        self._flush_every = max(int(flush_logs_every_n_steps), 1)
        self._rows: list[dict[str, Any]] | None = None  # loaded on first use (a resumed run keeps its rows)
        self._keys: list[str] = []
        self._pending = False
        self.hparams: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = self._next_version()
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self._name)

    @property
    def log_dir(self) -> str:
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        return os.path.join(self.root_dir, version)

    @property
    def experiment(self) -> AtomicCSVLogger:
        """The logger itself (it writes its files directly)."""
        return self

    def _next_version(self) -> int:
        try:
            names = os.listdir(self.root_dir)
        except FileNotFoundError:
            return 0
        found = [int(n.split("_", 1)[1]) for n in names
                 if n.startswith("version_") and n.split("_", 1)[1].isdigit() and
                 os.path.isdir(os.path.join(self.root_dir, n))]
        return max(found) + 1 if found else 0

    def _metrics_path(self) -> str:
        return os.path.join(self.log_dir, self.NAME_METRICS_FILE)

    def _load(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = []
            if os.path.isfile(self._metrics_path()):  # a resumed run with a fixed version: keep its rows
                with open(self._metrics_path(), newline="") as fh:
                    reader = csv.DictReader(fh)
                    self._rows = list(reader)
                    self._keys = list(reader.fieldnames or [])
        return self._rows

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        rows = self._load()
        row = {(f"{self._prefix}{self.LOGGER_JOIN_CHAR}{k}" if self._prefix else k):
               (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        row["step"] = len(rows) if step is None else int(step)
        rows.append(row)
        self._pending = True
        if (row["step"] + 1) % self._flush_every == 0:
            self.save()

    @rank_zero_only
    def log_hyperparams(self, params: Any = None, *args: Any, **kwargs: Any) -> None:
        self.hparams.update(_plain_params(params))
        os.makedirs(self.log_dir, exist_ok=True)
        atomic_hparams_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    @rank_zero_only
    def save(self) -> None:
        """Rewrite ``metrics.csv`` whole, atomically (nothing to do when no row came since the last save)."""
        if not self._pending:
            return
        rows = self._load()
        new = sorted({k for r in rows for k in r} - set(self._keys))
        self._keys.extend(new)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._keys)
        writer.writeheader()
        writer.writerows(rows)
        os.makedirs(self.log_dir, exist_ok=True)
        write_text_atomic(self._metrics_path(), buf.getvalue())
        self._pending = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


class AtomicTensorBoardLogger(TensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` (same arguments) whose ``hparams.yaml`` is written atomically."""

    @rank_zero_only
    def save(self) -> None:
        """Flush the event file; write ``hparams.yaml`` once the log folder exists (as Lightning does), atomically."""
        self.experiment.flush()
        hparams_file = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        if os.path.isdir(self.log_dir) and not os.path.isfile(hparams_file):
            atomic_hparams_yaml(hparams_file, self.hparams)
