"""Deterministic preprocessing of in-memory 2D items (archive slices), many items per call.

The first epoch of the 2D slice recipes used to spend most of its time in MONAI's per-item overhead: a few
microseconds of arithmetic per 64x64 slice wrapped in milliseconds of dictionary and metadata handling, for
thousands of slices. Transforms that act on each channel alone (intensity window, centre crop or pad, area
resize, finiteness check) give the same result on a stack of all items' channels as on each item, so
:func:`preprocess_stacked` concatenates the items' channels (``(n * C, H, W)``), runs the chain once per chunk and
splits the result again. Any other transform (z-score, HU windows that create channels, foreground crops) makes it
return None, and the caller keeps the per-item path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import EnsureTyped, Resized, ResizeWithPadOrCropd, ScaleIntensityRanged

from medeff.errors import NonFiniteImageError

__all__ = ["preprocess_stacked"]


def _stackable() -> tuple[type, ...]:
    from medeff.data.transforms import RequireFinited

    return (RequireFinited, ScaleIntensityRanged, EnsureTyped, ResizeWithPadOrCropd, Resized)


def preprocess_stacked(items: Sequence[Mapping[str, Any]], transforms: Sequence[Any],
                       chunk: int = 512) -> list[dict[str, Any]] | None:
    """``transforms`` applied to the ``image`` of every item, ``chunk`` items per call.

    Args:
        items: dictionaries whose ``image`` is a ``(C, H, W)`` array, all of one shape.
        transforms: the deterministic preprocessing (MONAI dictionary transforms on ``image`` only).
        chunk: items per call (bounds the temporary memory).

    Returns:
        New item dictionaries with the preprocessed ``image`` (a ``torch.Tensor``), or None when a
        transform may mix channels, the images differ in shape, or an image holds NaN/inf (the per-item path then
        names the case).
    """
    kinds = _stackable()
    if not items or any(type(t) not in kinds or list(t.keys) != ["image"] for t in transforms):
        return None
    shapes = {tuple(np.shape(it["image"])) for it in items}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        return None
    channels = next(iter(shapes))[0]
    out: list[dict[str, Any]] = []
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        data: dict[str, Any] = {"image": np.concatenate([np.asarray(it["image"]) for it in part], axis=0),
                                "case_id": "-"}
        try:
            for t in transforms:
                data = t(data)
        except NonFiniteImageError:
            return None
        img = data["image"]
        img = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(np.asarray(img))
        img = img.reshape(len(part), channels, *img.shape[1:])
        # own storage per item: a view would carry the whole chunk into every copy the dataset makes of an item;
        # plain tensors (no metadata: archive slices have no geometry), which MONAI transforms take as they are
        out += [{**it, "image": x.clone()} for it, x in zip(part, img)]
    return out
