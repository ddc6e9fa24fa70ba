"""Intensity transforms of CT channels: HU windows as separate channels, and per-channel normalisation.

Both are MONAI dictionary transforms used by :mod:`medeff.data.transforms`: :class:`HUWindowsd` turns one HU channel
into one channel per ``[width, level]`` window (e.g. lung, mediastinum, bone: the three channels an ImageNet model
expects), and :class:`ChannelNormalized` applies a pretrained model's mean/std.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medeff.errors import ConfigError

__all__ = ["DEFAULT_HU_WINDOWS", "hu_windows_spec", "HUWindowsd", "normalization_spec", "ChannelNormalized",
           "item_name"]

#: ``[width, level]`` in HU of the default three windows: lung, mediastinum (soft tissue), bone
DEFAULT_HU_WINDOWS: tuple[tuple[float, float], ...] = ((1500.0, -600.0), (350.0, 50.0), (2000.0, 300.0))


def item_name(d: Mapping[Hashable, Any]) -> str:
    """How messages name an in-memory item: its case (and archive row) when known."""
    meta = getattr(d.get("image"), "meta", None) or {}
    source = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if source:
        return f"Image '{source}'"
    if d.get("case_id") is not None:
        row = f", archive row {d['row']}" if d.get("row") is not None else ""
        return f"Image of case '{d['case_id']}'{row}"
    return "An in-memory image"


def hu_windows_spec(windows: Any) -> list[tuple[float, float]]:
    """``[[width, level], ...]`` (None: :data:`DEFAULT_HU_WINDOWS`) as checked pairs.

    Raises:
        ConfigError: not a list of ``[width > 0, level]`` pairs.
    """
    if windows is None:
        return [tuple(w) for w in DEFAULT_HU_WINDOWS]
    ok = isinstance(windows, Sequence) and not isinstance(windows, str) and len(windows) > 0
    pairs = []
    for w in windows if ok else []:
        if (not isinstance(w, Sequence) or isinstance(w, str) or len(w) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in w) or w[0] <= 0):
            ok = False
            break
        pairs.append((float(w[0]), float(w[1])))
    if not ok:
        raise ConfigError(f"data.preprocessing.hu_windows must be a list of [width, level] pairs in HU with "
                          f"width > 0, got {windows!r}.",
                          hint="e.g. [[1500, -600], [350, 50], [2000, 300]] (lung, mediastinum, bone), or null for "
                               "these defaults.")
    return pairs


class HUWindowsd(MapTransform):
    """One channel per HU window: ``clip((x - (level - width/2)) / width, 0, 1)``.

    A one-channel CT image (HU) becomes ``len(windows)`` channels, e.g. lung, mediastinum and bone windows as the
    three channels a network pretrained on RGB images expects.

    Args:
        keys: image keys.
        windows: ``[width, level]`` per output channel (None: :data:`DEFAULT_HU_WINDOWS`).
        allow_missing_keys: skip absent keys.

    Raises:
        ConfigError: bad windows; an image with more than one channel.
    """

    def __init__(self, keys: KeysCollection, windows: Sequence[Sequence[float]] | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windows = hu_windows_spec(windows)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key] if isinstance(d[key], torch.Tensor) else torch.as_tensor(np.asarray(d[key]))
            if x.shape[0] != 1:
                raise ConfigError(f"{item_name(d)} has {x.shape[0]} channels; data.preprocessing.channels="
                                  "hu_windows needs one-channel (HU) images.",
                                  hint="use channels: single for multi-channel or 2.5D data.")
            x = x.float()
            d[key] = torch.cat([((x - (level - width / 2)) / width).clamp(0.0, 1.0) for width, level in self.windows])
        return d


def normalization_spec(normalize: Any) -> tuple[list[float], list[float]] | None:
    """``(mean, std)`` of a ``data.preprocessing.normalize`` value; None for ``auto`` (unresolved), null or none.

    Raises:
        ConfigError: not ``auto``/null or ``{mean: [...], std: [...]}`` with equal lengths and std > 0.
    """
    if normalize in (None, "auto", "none", False):
        return None
    ok = isinstance(normalize, Mapping) and set(normalize) == {"mean", "std"}
    if ok:
        mean, std = normalize["mean"], normalize["std"]
        mean = [mean] if isinstance(mean, (int, float)) else mean
        std = [std] if isinstance(std, (int, float)) else std
        ok = (isinstance(mean, Sequence) and isinstance(std, Sequence) and len(mean) == len(std) > 0
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*mean, *std])
              and all(v > 0 for v in std))
    if not ok:
        raise ConfigError(f"data.preprocessing.normalize must be auto, null or {{mean: [...], std: [...]}} (one "
                          f"value per channel, or one for all; std > 0), got {normalize!r}.",
                          hint="e.g. normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}, or "
                               "auto for the pretrained model's values.")
    return [float(v) for v in mean], [float(v) for v in std]


class ChannelNormalized(MapTransform):
    """``(x - mean[c]) / std[c]`` per channel ``c`` (one mean/std value applies to every channel).

    Args:
        keys: image keys.
        mean: per-channel means (or one).
        std: per-channel standard deviations (or one), > 0.
        allow_missing_keys: skip absent keys.

    Raises:
        ConfigError: the image's channel count differs from the number of values.
    """

    def __init__(self, keys: KeysCollection, mean: Sequence[float], std: Sequence[float],
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mean, self.std = normalization_spec({"mean": list(mean), "std": list(std)})

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key] if isinstance(d[key], torch.Tensor) else torch.as_tensor(np.asarray(d[key]))
            n = len(self.mean)
            if n not in (1, x.shape[0]):
                raise ConfigError(f"data.preprocessing.normalize has {n} values per statistic but the images have "
                                  f"{x.shape[0]} channels.",
                                  hint="give one mean/std per image channel (or one for all), or check "
                                       "data.in_channels and data.preprocessing.channels.")
            shape = (n,) + (1,) * (x.ndim - 1)
            mean = torch.tensor(self.mean, dtype=torch.float32).reshape(shape)
            std = torch.tensor(self.std, dtype=torch.float32).reshape(shape)
            d[key] = (x.float() - mean) / std
        return d
