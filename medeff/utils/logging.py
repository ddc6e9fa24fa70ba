"""Logging set-up for medeff commands: readable console lines through rich when present."""

from __future__ import annotations

import logging
import os

__all__ = ["get_logger", "setup_logging"]


def get_logger(name: str) -> logging.Logger:
    """Return the ``medeff`` child logger for ``name`` (use ``__name__``)."""
    return logging.getLogger(name if name.startswith("medeff") else f"medeff.{name}")


def setup_logging(level: str | int | None = None) -> None:
    """Configure the ``medeff`` logger once: level from ``level`` or ``MEDEFF_LOG_LEVEL`` (default INFO)."""
    level = level or os.environ.get("MEDEFF_LOG_LEVEL", "INFO")
    logger = logging.getLogger("medeff")
    logger.setLevel(level)
    if logger.handlers:
        return
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    except ImportError:  # pragma: no cover
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
