"""Map a segmentation from the network's grid back onto the input's grid (``resample`` of ``conf/predict.yaml``).

``medeff predict`` segments on the preprocessed grid (reoriented, resampled to the training spacing, cropped) and
writes the mask on the grid of the input. Two ways to get there:

* ``probabilities`` (default, the way nnU-Net does it): the softmax probability of every class is mapped back
  through the inverse of the preprocessing with linear interpolation, and the label of each input voxel is the class
  of highest interpolated probability. A structure thinner than a voxel of the network's grid (a vessel, a thin
  plate, an organ edge at coarse slice spacing) keeps its shape on a finer input grid.
* ``labels``: the label map is taken on the network's grid first and mapped back with nearest-neighbour
  interpolation (blocky where the input grid is finer than the network's).

Preprocessing that crops (``crop_foreground``, ``resize_to_patch``) is inverted by padding with zeros; the
background probability is therefore mapped back as ``1 - p`` (linear interpolation commutes with it), so the padded
region is background with probability 1, as the label path makes it, and never the class of the nearest crop edge.

Memory: the classes are mapped back a group at a time, sized so one group fits ``memory_mb`` (float32 on the input
grid), and reduced into a running maximum and argmax; the probabilities never exist for all classes at once on the
input grid. Interpolation runs in float32 (MONAI's resampling would otherwise use the preprocessing's float64).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from medeff.errors import ConfigError

__all__ = ["RESAMPLE_MODES", "SourceGrid", "check_resample_mode", "check_memory_mb"]

RESAMPLE_MODES = ("probabilities", "labels")


def check_resample_mode(value: Any) -> str:
    """``resample`` of the predict config.

    Raises:
        ConfigError: not one of :data:`RESAMPLE_MODES`.
    """
    mode = "probabilities" if value in (None, "") else str(value)
    if mode not in RESAMPLE_MODES:
        raise ConfigError(f"Unknown resample mode {value!r} (config key 'resample').",
                          hint="use resample=probabilities (interpolate class probabilities, then argmax; the "
                               "default) or resample=labels (argmax, then nearest neighbour).")
    return mode


def check_memory_mb(value: Any) -> float:
    """``resample_memory_mb`` of the predict config: a number > 0 (null: 2048).

    Raises:
        ConfigError: not a positive number.
    """
    if value is None:
        return 2048.0
    try:
        mb = float(value)
    except (TypeError, ValueError):
        mb = float("nan")
    if isinstance(value, bool) or not np.isfinite(mb) or mb <= 0:
        raise ConfigError(f"resample_memory_mb must be a number of megabytes > 0, got {value!r}.",
                          hint="e.g. resample_memory_mb=2048; a small value maps the classes back one at a time.")
    return mb


def _float32_operations(ops: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A copy of MONAI's applied-operations list whose resampling steps compute in float32."""
    from monai.utils import TraceKeys

    out = copy.deepcopy(list(ops))
    for op in out:
        extra = op.get(TraceKeys.EXTRA_INFO)
        if isinstance(extra, dict) and "dtype" in extra:
            extra["dtype"] = torch.float32
    return out


class SourceGrid:
    """Inverts the preprocessing of one case (its MONAI ``MetaTensor`` image carries the applied operations).

    Args:
        pre: the deterministic preprocessing (a MONAI ``Compose`` of invertible transforms).
        memory_mb: memory one group of classes may take on the input grid (float32), at least one class a group.
    """

    def __init__(self, pre, memory_mb: float = 2048.0) -> None:
        from monai.transforms import Invertd

        self.pre = pre
        self.memory_mb = float(memory_mb)
        self._nearest = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True)
        self._linear = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)

    def _invert(self, image, values: torch.Tensor, *, nearest: bool) -> torch.Tensor:
        from monai.data import MetaTensor

        meta = {k: v for k, v in image.meta.items() if k != "affine"}
        ops = list(image.applied_operations) if nearest else _float32_operations(image.applied_operations)
        pred = MetaTensor(values, affine=image.affine, meta=dict(meta), applied_operations=ops)
        if nearest:
            out = self._nearest({"image": image, "pred": pred})["pred"]
        else:
            # the operations in float32 ride on an empty stand-in of the image (no voxels needed)
            src = MetaTensor(image.as_tensor()[:0], affine=image.affine, meta=dict(meta), applied_operations=ops)
            out = self._linear({"image": src, "pred": pred})["pred"]
        return out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)

    def labels(self, image, logits: torch.Tensor) -> np.ndarray:
        """``resample=labels``: argmax on the network's grid, nearest neighbour onto the input grid.

        Args:
            image: the preprocessed image (``MetaTensor``) of the case.
            logits: ``(C, *spatial)`` network output on the preprocessed grid.
        """
        label = logits.argmax(dim=0, keepdim=True).to(torch.int16).cpu()
        return self._invert(image, label, nearest=True).numpy()[0]

    def probabilities(self, image, logits: torch.Tensor,
                      on_class: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
        """``resample=probabilities``: softmax, linear interpolation of each class onto the input grid, argmax.

        Args:
            image: the preprocessed image (``MetaTensor``) of the case.
            logits: ``(C, *spatial)`` network output on the preprocessed grid.
            on_class: called as ``on_class(k, probability of class k on the input grid)`` for every class, in
                order (e.g. to write probability maps); the array is only valid during the call.

        Returns:
            The label map on the input grid (int16); ties go to the lower class, as ``argmax`` does.
        """
        probs = torch.softmax(logits.float(), dim=0).cpu()
        n_classes = int(probs.shape[0])
        shape = tuple(int(n) for n in image.meta["spatial_shape"])
        per_class_mb = 4.0 * float(np.prod(shape)) / 2 ** 20
        group = max(1, min(n_classes, int(self.memory_mb // max(2.0 * per_class_mb, 1e-9))))
        best: torch.Tensor | None = None
        label: torch.Tensor | None = None
        probs[0] = 1.0 - probs[0]  # background travels as 1 - p: where the inverse pads (crops), it is background
        for start in range(0, n_classes, group):
            chunk = self._invert(image, probs[start:start + group], nearest=False).float()
            if start == 0:
                chunk[0] = 1.0 - chunk[0]
            for j in range(chunk.shape[0]):
                k = start + j
                p = chunk[j]
                if on_class is not None:
                    on_class(k, p.numpy())
                if best is None:
                    best = p.clone()
                    label = torch.zeros(p.shape, dtype=torch.int16)
                    continue
                better = p > best
                best = torch.where(better, p, best)
                label[better] = k
            del chunk
        assert label is not None
        return label.numpy()

