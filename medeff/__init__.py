"""medeff: EfficientNet classification and segmentation for CT and MR volumes.

The package is organised along the data flow::

    medeff.io          DICOM / NIfTI / NRRD / MHA readers and writers (array + geometry)
    medeff.data        dataset index, folds, fingerprints, transforms, datasets
    medeff.models      EfficientNet V1/V2 encoders (2D/3D), U-Net decoder, heads, weight loading
    medeff.engine      Lightning tasks, training, inference
    medeff.evaluation  metrics with confidence intervals and clinical reports
    medeff.cli         the ``medeff`` command (the only code that reads argv)

Heavy submodules are imported lazily so that ``import medeff`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "load_weights"]

_LAZY = {
    "create_model": "medeff.models",
    "list_models": "medeff.models",
    "load_weights": "medeff.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medeff' has no attribute {name!r}")
