"""Augmentation of whole 2D batches as tensors (``data.batch_augmentation: true``), on the model's device.

The per-sample MONAI chain runs one small transform after another on every 64x64 slice in the loader; on two CPU
cores it delivers fewer slices per second than a small network consumes. :class:`BatchAugment` draws the same
random operations per image but applies each one to the whole batch at once (a handful of tensor operations per
batch instead of a dozen per image), after the batch reached the device (GPU when there is one).

Operations, from the ``augmentation`` spec (``conf/augmentation``), each drawn independently per image:

* ``flip_prob`` / ``flip_axes``: mirror along each listed spatial axis with that probability;
* ``rot90_prob`` / ``rot90_axes``: a turn by 90, 180 or 270 degrees (equally likely) with that probability
  (square images);
* ``rotate_prob`` / ``rotate_deg``: rotation by an angle uniform in ``[-rotate_deg, rotate_deg]``, bilinear, border
  values repeated (one ``grid_sample`` for the rotated images of the batch);
* ``intensity_prob`` with ``scale`` / ``shift``: ``x * (1 + u)``, ``u`` uniform in ``[-scale, scale]``, then
  ``x + v``, ``v`` uniform in ``[-shift, shift]``, each applied with that probability;
* ``noise_prob`` / ``noise_std``: Gaussian noise whose standard deviation is uniform in ``[0, noise_std]``;
* then the channel normalisation of ``data.preprocessing.normalize`` (it must follow the intensity jitter).

These follow the definitions of the per-sample transforms (:func:`medeff.data.transforms.augmentation_transforms`),
so a recipe keeps its augmentation; the random draws differ. Draws come from a generator owned by the augmenter:
:meth:`BatchAugment.reseed` (called with the epoch seed by the data module) makes every epoch reproducible.
Crops are not supported (2D classification slices are fixed-size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from medeff.errors import ConfigError

__all__ = ["BatchAugment", "BATCH_KEYS"]

#: Augmentation keys :class:`BatchAugment` implements (``name`` is ignored).
BATCH_KEYS = ("flip_prob", "flip_axes", "rot90_prob", "rot90_axes", "rotate_prob", "rotate_deg", "intensity_prob",
              "scale", "shift", "noise_prob", "noise_std")


class BatchAugment:
    """Random flips, 90-degree turns, small rotations, intensity jitter and noise on a ``(B, C, H, W)`` batch.

    Args:
        augmentation: the ``augmentation`` spec (keys as in ``conf/augmentation/slice_2d.yaml``).
        normalize: ``(mean, std)`` per channel applied last, or None.
        seed: initial seed of the generator (None: drawn from torch's global generator).

    Raises:
        ConfigError: a key it does not implement (e.g. ``crop``), or axes outside the two spatial axes.
    """

    def __init__(self, augmentation: Mapping[str, Any] | None, *,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = None, seed: int | None = None) -> None:
        aug = {k: v for k, v in dict(augmentation or {}).items() if k != "name"}
        unknown = sorted(k for k in aug if k not in BATCH_KEYS and not (k == "crop" and _crop_off(aug[k])))
        if unknown:
            raise ConfigError(f"data.batch_augmentation cannot apply augmentation key(s) {unknown}.",
                              hint=f"batch augmentation implements {list(BATCH_KEYS)}; set "
                                   "data.batch_augmentation=false for the others.")
        self.flip_prob = float(aug.get("flip_prob", 0.0))
        self.flip_axes = [self._axis(a, "flip_axes") for a in aug.get("flip_axes", [0, 1])]
        self.rot90_prob = float(aug.get("rot90_prob", 0.0))
        self.rot90_axes = [self._axis(a, "rot90_axes") for a in aug.get("rot90_axes", [0, 1])]
        if self.rot90_prob > 0 and sorted(self.rot90_axes) != [0, 1]:
            raise ConfigError(f"augmentation.rot90_axes={aug.get('rot90_axes')} must name the two axes [0, 1] of 2D "
                              "images.", hint="set rot90_axes: [0, 1].")
        self.rotate_prob = float(aug.get("rotate_prob", 0.0))
        self.rotate_rad = math.radians(float(aug.get("rotate_deg", 15.0)))
        self.intensity_prob = float(aug.get("intensity_prob", 0.0))
        self.scale, self.shift = float(aug.get("scale", 0.0)), float(aug.get("shift", 0.0))
        self.noise_prob, self.noise_std = float(aug.get("noise_prob", 0.0)), float(aug.get("noise_std", 0.02))
        self.normalize = None if normalize is None else (list(map(float, normalize[0])), list(map(float, normalize[1])))
        self._seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else int(seed)
        self._generators: dict[str, torch.Generator] = {}

    @staticmethod
    def _axis(a: Any, key: str) -> int:
        if int(a) not in (0, 1):
            raise ConfigError(f"augmentation.{key} holds axis {a}; batch augmentation works on 2D images (axes 0, 1).",
                              hint="use axes 0 and 1, or data.batch_augmentation=false.")
        return int(a)

    @property
    def seed(self) -> int:
        """The seed the current draws started from."""
        return self._seed

    def reseed(self, seed: int) -> None:
        """Restart the random draws from ``seed`` (every device's generator)."""
        self._seed = int(seed)
        self._generators.clear()

    def _generator(self, device: torch.device) -> torch.Generator:
        name = str(device)
        if name not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(self._seed)
            self._generators[name] = g
        return self._generators[name]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a ``(B, C, H, W)`` floating-point batch; returns a new tensor (the input is not modified)."""
        if x.ndim != 4 or not x.is_floating_point():
            raise ConfigError(f"Batch augmentation expects a float (batch, channels, H, W) tensor, got "
                              f"{tuple(x.shape)} {x.dtype}.", hint="use it for 2D image batches only.")
        g = self._generator(x.device)
        b, dev = x.shape[0], x.device

        def chosen(p: float) -> torch.Tensor:
            return torch.rand(b, generator=g, device=dev) < p

        def per_image(mask: torch.Tensor) -> torch.Tensor:
            return mask.view(b, 1, 1, 1)

        if self.flip_prob > 0:
            for ax in self.flip_axes:
                x = torch.where(per_image(chosen(self.flip_prob)), x.flip(2 + ax), x)
        if self.rot90_prob > 0:
            if x.shape[2] != x.shape[3]:
                raise ConfigError(f"augmentation.rot90_prob turns images by 90 degrees; these are "
                                  f"{x.shape[2]}x{x.shape[3]}.", hint="use square images or rot90_prob: 0.")
            turn = torch.where(chosen(self.rot90_prob), torch.randint(1, 4, (b,), generator=g, device=dev), 0)
            out = x
            for k in (1, 2, 3):
                out = torch.where(per_image(turn == k), torch.rot90(x, k, (2, 3)), out)
            x = out
        if self.rotate_prob > 0 and self.rotate_rad > 0:
            angle = (torch.rand(b, generator=g, device=dev) * 2 - 1) * self.rotate_rad
            angle = torch.where(chosen(self.rotate_prob), angle, torch.zeros_like(angle))
            sel = angle != 0
            if bool(sel.any()):
                a = angle[sel].to(x.dtype)
                cos, sin = torch.cos(a), torch.sin(a)
                zero = torch.zeros_like(a)
                theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
                grid = F.affine_grid(theta, list(x[sel].shape), align_corners=False)
                x = x.clone()
                x[sel] = F.grid_sample(x[sel], grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.intensity_prob > 0 and self.scale > 0:
            u = (torch.rand(b, generator=g, device=dev, dtype=x.dtype) * 2 - 1) * self.scale
            x = x * per_image(1 + torch.where(chosen(self.intensity_prob), u, torch.zeros_like(u)))
        if self.intensity_prob > 0 and self.shift > 0:
            v = (torch.rand(b, generator=g, device=dev, dtype=x.dtype) * 2 - 1) * self.shift
            x = x + per_image(torch.where(chosen(self.intensity_prob), v, torch.zeros_like(v)))
        if self.noise_prob > 0 and self.noise_std > 0:
            std = torch.rand(b, generator=g, device=dev, dtype=x.dtype) * self.noise_std
            std = torch.where(chosen(self.noise_prob), std, torch.zeros_like(std))
            x = x + torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype) * per_image(std)
        if self.normalize is not None:
            mean = torch.tensor(self.normalize[0], device=dev, dtype=x.dtype).view(1, -1, 1, 1)
            std_c = torch.tensor(self.normalize[1], device=dev, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std_c
        return x


def _crop_off(crop: Any) -> bool:
    return not crop or str(dict(crop).get("mode", "none")) == "none"
