"""Training and inference engine: Lightning tasks, checkpoints, ``train(cfg)`` and ``predict(cfg)``.

Heavy imports (Lightning, MONAI) happen on first use of an attribute.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ClassificationTask", "SegmentationTask", "JointTask", "train", "predict", "load_checkpoint",
           "load_model", "AtomicCheckpointIO"]

_LAZY = {
    "ClassificationTask": "medeff.engine.tasks",
    "SegmentationTask": "medeff.engine.tasks",
    "JointTask": "medeff.engine.tasks",
    "train": "medeff.engine.train",
    "predict": "medeff.engine.predict",
    "load_model": "medeff.engine.predict",
    "load_checkpoint": "medeff.engine.checkpoint",
    "AtomicCheckpointIO": "medeff.engine.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medeff.engine' has no attribute {name!r}")
