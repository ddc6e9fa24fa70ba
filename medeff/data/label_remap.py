"""Label remapping: keep a subset of a label map's values under new values (e.g. 7 organs of a 117-class map).

A remap is ``{source value: new value}``; source values that are not listed become background (0). It is an index
option (``label_remap`` in ``conf/index.yaml``), stored in the index and applied wherever label maps are read:
validation and fingerprints when indexing, and the training/validation transforms
(:class:`medeff.data.transforms.RemapLabelsd`). This module needs NumPy only (evaluation uses it too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medeff.errors import ConfigError

__all__ = ["parse_label_remap", "remap_labels"]


def parse_label_remap(obj: Any, key: str = "label_remap") -> dict[int, int]:
    """``{source: new}`` (a mapping, or a list of ``[source, new]`` pairs) as ints; empty for None.

    Raises:
        ConfigError: non-integer or negative values, or a source mapped to background by name only.
    """
    if obj is None:
        return {}
    items = obj.items() if isinstance(obj, Mapping) else obj
    out: dict[int, int] = {}
    try:
        for src, dst in items:
            s, d = int(src), int(dst)
            if s < 0 or d < 0:
                raise ValueError
            out[s] = d
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} must map label values to label values (non-negative integers), got {obj!r}.",
                          hint=f"e.g. '{key}={{1: 1, 5: 2, 52: 3}}' (unlisted values become background 0).") from exc
    return out


def remap_labels(array: Any, mapping: Mapping[int, int]) -> Any:
    """Apply ``mapping`` to a label array (numpy or torch); unlisted values become 0. Empty mapping: unchanged."""
    if not mapping:
        return array
    is_torch = type(array).__module__.split(".")[0] in ("torch", "monai")
    arr = array.detach().cpu().numpy() if is_torch else np.asarray(array)
    if arr.size and (arr.min() < 0 or not np.all(arr == np.round(arr))):
        raise ValueError("label maps must hold non-negative integer values")
    top = int(max(int(arr.max()) if arr.size else 0, max(mapping)))
    table = np.zeros(top + 1, dtype=np.int64)
    for s, d in mapping.items():
        table[int(s)] = int(d)
    out = table[arr.astype(np.int64)].astype(arr.dtype if arr.dtype.kind in "iu" else np.int64)
    if is_torch:
        import torch

        res = torch.as_tensor(out)
        if hasattr(array, "copy_meta_from"):  # MetaTensor: keep affine and metadata
            from monai.data import MetaTensor

            return MetaTensor(res, affine=array.affine, meta={k: v for k, v in array.meta.items() if k != "affine"},
                              applied_operations=list(array.applied_operations))
        return res
    return out
