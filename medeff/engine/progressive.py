"""EfficientNetV2 progressive learning: input size and regularisation grow together over training stages.

Training is cut into ``M`` stages (Tan & Le, *EfficientNetV2*, 2021, Algorithm 1). In stage ``i`` (0-based) every
scheduled quantity takes the value ``start + (end - start) * i / (M - 1)``: the spatial size of the training
inputs (from ``start_size`` or ``start_scale`` x the final size up to the size the data module delivers), the
dropout rate of the classification head, the stochastic-depth (drop-path) rate of the encoder and the magnitude
of the random augmentation (``augmentation_scale`` multiplies the magnitude keys of ``conf/augmentation``;
``augmentation`` sets any numeric augmentation key per stage). Small images come with weak regularisation, the
final size with the configured, strongest one.

How each part is applied:

* size: in ``on_train_batch_start`` the batch's ``image`` (and a spatial ``label``) is resized on the fly with
  ``F.interpolate`` (``mode: resize``; linear for images, nearest for labels) or cut to a random window of the
  stage size (``mode: crop``, keeps the voxel spacing; useful for CT segmentation). The last stage leaves the
  batch untouched. Validation, checkpoints and ``medeff predict`` never see a resized input.
* dropout / drop-path: set in place on the network at each epoch start (the head's ``nn.Dropout`` and every
  residual block's :class:`medeff.layers.DropPath`, block ``b`` of ``n`` getting ``rate * b / n`` as at build
  time); layers built with rate 0 are given a dropout module, so the model config may start from 0.
* augmentation: the data module's :meth:`~medeff.data.datamodule.MedeffDataModule.set_augmentation` rebuilds the
  random half of the training transforms; the cached deterministic half is kept.

The stage depends only on the epoch (``epoch // epochs_per_stage``, or ``epoch * M // max_epochs``), so a run
resumed from an epoch-end checkpoint continues with the same schedule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from medeff.errors import ConfigError
from medeff.utils.logging import get_logger

__all__ = ["ProgressiveLearning", "MAGNITUDE_KEYS", "linear_value", "stage_sizes"]

log = get_logger(__name__)

#: Augmentation keys whose value is a magnitude (scaled by ``augmentation_scale``); probabilities are not.
MAGNITUDE_KEYS = ("rotate_deg", "scale", "shift", "noise_std")
MODES = ("resize", "crop")


def linear_value(start: float, end: float, stage: int, num_stages: int) -> float:
    """``start + (end - start) * stage / (num_stages - 1)`` (``end`` when there is a single stage)."""
    if num_stages <= 1:
        return float(end)
    return float(start) + (float(end) - float(start)) * stage / (num_stages - 1)


def stage_sizes(final: Sequence[int], num_stages: int, *, start_size: Sequence[int] | None = None,
                start_scale: float = 0.5, divisor: int = 8) -> list[tuple[int, ...]]:
    """Spatial size of every stage: linear from the start size to ``final``, rounded to ``divisor``.

    Args:
        final: size of the last stage (the size the data delivers).
        num_stages: M.
        start_size: size of the first stage (one value per axis, or one for all); None uses ``start_scale``.
        start_scale: first-stage size as a fraction of ``final``.
        divisor: every size but the last is rounded to a multiple of it (at least ``divisor``, at most final).

    Returns:
        One size tuple per stage; the last is ``final`` itself.
    """
    final = tuple(int(f) for f in final)
    if start_size is None:
        start = [f * float(start_scale) for f in final]
    else:
        start = [float(s) for s in start_size] if len(start_size) == len(final) else [float(start_size[0])] * len(final)
    out = []
    for i in range(num_stages):
        if i == num_stages - 1:
            out.append(final)
            continue
        size = []
        for s, f in zip(start, final):
            v = linear_value(s, f, i, num_stages)
            size.append(int(min(f, max(divisor, divisor * round(v / divisor)))))
        out.append(tuple(size))
    return out


def _pair(value: Any, what: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        try:
            return float(value[0]), float(value[1])
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"callbacks.progressive.{what} must be [start, end] (numbers) or null, got {value!r}.",
                      hint=f"e.g. {what}: [0.1, 0.3].")


class ProgressiveLearning(L.Callback):
    """Lightning callback for EfficientNetV2 progressive learning (see the module docstring).

    Args:
        num_stages: M, the number of stages (>= 1).
        epochs_per_stage: epochs of each stage; None splits ``trainer.max_epochs`` evenly (epoch * M // max_epochs).
        start_size: input size of the first stage (per axis, or one number); None uses ``start_scale``.
        start_scale: first-stage size as a fraction of the final size.
        size_divisor: stage sizes are rounded to multiples of this (e.g. the network's stride).
        mode: ``resize`` (interpolate the whole input, as in the paper) or ``crop`` (random window, same spacing).
        dropout: ``[start, end]`` head dropout rate, or None to leave the model's.
        drop_path: ``[start, end]`` stochastic-depth rate, or None to leave the model's.
        augmentation_scale: ``[start, end]`` factor on the magnitude keys (:data:`MAGNITUDE_KEYS`) of the configured
            augmentation, or None.
        augmentation: ``{key: [start, end]}`` for any numeric augmentation key (wins over ``augmentation_scale``).

    Attributes:
        history: one entry per training epoch: ``epoch``, ``stage``, ``dropout``, ``drop_path``, ``augmentation``
            and the input ``size`` of its batches.

    Raises:
        ConfigError: invalid values, a schedule that cannot be placed on the epochs, or a network / data module
            without the layers or hook a scheduled quantity needs.
    """

    def __init__(self, *, num_stages: int = 4, epochs_per_stage: int | None = None,
                 start_size: int | Sequence[int] | None = None, start_scale: float = 0.5, size_divisor: int = 8,
                 mode: str = "resize", dropout: Sequence[float] | None = None,
                 drop_path: Sequence[float] | None = None, augmentation_scale: Sequence[float] | None = None,
                 augmentation: Mapping[str, Sequence[float]] | None = None) -> None:
        super().__init__()
        if int(num_stages) < 1:
            raise ConfigError(f"callbacks.progressive.num_stages must be >= 1, got {num_stages}.")
        if epochs_per_stage is not None and int(epochs_per_stage) < 1:
            raise ConfigError(f"callbacks.progressive.epochs_per_stage must be >= 1 or null, got {epochs_per_stage}.")
        if mode not in MODES:
            raise ConfigError(f"Unknown callbacks.progressive.mode {mode!r}.", hint=f"use one of {MODES}.")
        if not 0.0 < float(start_scale) <= 1.0:
            raise ConfigError(f"callbacks.progressive.start_scale must lie in (0, 1], got {start_scale}.")
        if int(size_divisor) < 1:
            raise ConfigError(f"callbacks.progressive.size_divisor must be >= 1, got {size_divisor}.")
        self.num_stages = int(num_stages)
        self.epochs_per_stage = None if epochs_per_stage is None else int(epochs_per_stage)
        self.start_size = None if start_size is None else (
            [int(start_size)] if isinstance(start_size, (int, float)) else [int(s) for s in start_size])
        self.start_scale, self.size_divisor, self.mode = float(start_scale), int(size_divisor), mode
        self.dropout = _pair(dropout, "dropout")
        self.drop_path = _pair(drop_path, "drop_path")
        for name, pair in (("dropout", self.dropout), ("drop_path", self.drop_path)):
            if pair is not None and not all(0.0 <= v < 1.0 for v in pair):
                raise ConfigError(f"callbacks.progressive.{name} rates must lie in [0, 1), got {list(pair)}.")
        self.augmentation_scale = _pair(augmentation_scale, "augmentation_scale")
        pairs = {str(k): _pair(v, f"augmentation.{k}") for k, v in dict(augmentation or {}).items()}
        self.augmentation = {k: p for k, p in pairs.items() if p is not None}
        self.history: list[dict[str, Any]] = []
        self._base_aug: dict[str, Any] | None = None
        self._applied_aug: dict[str, Any] | None = None
        self._first_epoch_of_fit = False
        self._warned: set[str] = set()

    # ---- schedule ---------------------------------------------------------------------------------------------
    def stage_of(self, epoch: int, max_epochs: int | None) -> int:
        """Stage of ``epoch`` (0-based), capped at the last stage.

        Raises:
            ConfigError: neither ``epochs_per_stage`` nor a positive ``max_epochs`` is known.
        """
        if self.epochs_per_stage is not None:
            return min(self.num_stages - 1, int(epoch) // self.epochs_per_stage)
        if not max_epochs or int(max_epochs) < 1:
            raise ConfigError("callbacks.progressive needs the number of epochs to place its stages, but "
                              "trainer.max_epochs is not set.",
                              hint="set trainer.max_epochs or callbacks.progressive.epochs_per_stage.")
        return min(self.num_stages - 1, int(epoch) * self.num_stages // int(max_epochs))

    def values(self, stage: int) -> dict[str, Any]:
        """Regularisation of ``stage``: ``dropout``, ``drop_path`` (None when not scheduled) and the
        ``augmentation`` overrides (``{}`` when not scheduled)."""
        m = self.num_stages
        out: dict[str, Any] = {
            "dropout": None if self.dropout is None else linear_value(*self.dropout, stage, m),
            "drop_path": None if self.drop_path is None else linear_value(*self.drop_path, stage, m),
        }
        aug: dict[str, float] = {}
        if self.augmentation_scale is not None and self._base_aug is not None:
            factor = linear_value(*self.augmentation_scale, stage, m)
            for key in MAGNITUDE_KEYS:
                if isinstance(self._base_aug.get(key), (int, float)):
                    aug[key] = float(self._base_aug[key]) * factor
        for key, pair in self.augmentation.items():
            aug[key] = linear_value(*pair, stage, m)
        out["augmentation"] = aug
        return out

    def size_for(self, stage: int, final: Sequence[int]) -> tuple[int, ...]:
        """Input size of ``stage`` when the data delivers ``final``."""
        start = self.start_size
        if start is not None and len(start) not in (1, len(final)):
            raise ConfigError(f"callbacks.progressive.start_size has {len(start)} values for {len(final)}D inputs.",
                              hint="give one size per spatial axis, or one number for all.")
        return stage_sizes(final, self.num_stages, start_size=start, start_scale=self.start_scale,
                           divisor=self.size_divisor)[stage]

    def _stage(self, trainer: L.Trainer) -> int:
        return self.stage_of(trainer.current_epoch, trainer.max_epochs)

    # ---- applying the regularisation --------------------------------------------------------------------------
    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    def _set_drop_path(self, net: nn.Module, rate: float) -> None:
        from medeff.layers import DropPath
        from medeff.models.efficientnet import EfficientNet

        encoders = [m for m in net.modules() if isinstance(m, EfficientNet)]
        if not encoders:
            raise ConfigError(f"callbacks.progressive.drop_path needs a medeff EfficientNet, but the network is "
                              f"{type(net).__name__}.", hint="set callbacks.progressive.drop_path=null.")
        for enc in encoders:
            blocks = [b for stage in enc.blocks for b in stage]
            for idx, block in enumerate(blocks):
                if not getattr(block, "has_skip", False):
                    continue
                r = rate * idx / len(blocks)
                if isinstance(block.drop_path, DropPath):
                    block.drop_path.rate = r
                else:
                    block.drop_path = DropPath(r)

    def _set_dropout(self, net: nn.Module, rate: float) -> None:
        from medeff.models.efficientnet import EfficientNet
        from medeff.models.heads import ClassificationHead

        found = 0
        for m in net.modules():
            attr = ("head_drop" if isinstance(m, EfficientNet) and not m.features_only
                    else "drop" if isinstance(m, ClassificationHead) else None)
            if attr is None:
                continue
            layer = getattr(m, attr)
            if isinstance(layer, nn.Dropout):
                layer.p = float(rate)
            else:
                setattr(m, attr, nn.Dropout(float(rate)))
            found += 1
        if not found:
            self._warn_once("dropout", "callbacks.progressive.dropout: %s has no classification head; the dropout "
                            "schedule is ignored.", type(net).__name__)

    def _set_augmentation(self, trainer: L.Trainer, overrides: Mapping[str, float]) -> bool:
        """Apply the augmentation of a stage; True when the training transforms changed."""
        if not overrides:
            return False
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "set_augmentation"):
            raise ConfigError("callbacks.progressive schedules the augmentation, but the data module has no "
                              "set_augmentation hook.",
                              hint="use medeff's data module, or set augmentation_scale and augmentation to null.")
        spec = {**(self._base_aug or {}), **overrides}
        if spec == self._applied_aug:
            return False
        dm.set_augmentation(spec)
        self._applied_aug = spec
        return True

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: int) -> dict[str, Any]:
        values = self.values(stage)
        net = getattr(pl_module, "net", pl_module)
        if values["drop_path"] is not None:
            self._set_drop_path(net, values["drop_path"])
        if values["dropout"] is not None:
            self._set_dropout(net, values["dropout"])
        values["changed_augmentation"] = self._set_augmentation(trainer, values["augmentation"])
        return values

    # ---- Lightning hooks --------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Remember the configured augmentation and apply the first epoch's stage before any batch is drawn."""
        if stage != "fit":
            return
        dm = getattr(trainer, "datamodule", None)
        if self._base_aug is None:
            self._base_aug = dict(getattr(dm, "augmentation", None) or {})
        self._apply(trainer, pl_module, self._stage(trainer))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._first_epoch_of_fit = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set the stage's regularisation. On the first epoch of a fit (a resume into a later stage), Lightning
        created the loader's iterator before this hook, so worker processes (``num_workers > 0``) or a prefetched
        batch would carry the earlier augmentation: the iterator is started again (nothing was consumed yet)."""
        stage = self._stage(trainer)
        values = self._apply(trainer, pl_module, stage)
        if self._first_epoch_of_fit and values["changed_augmentation"]:
            fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
            if fetcher is not None:
                iter(fetcher)  # same epoch seed, same order; workers now copy this stage's transforms
            else:
                self._warn_once("refetch", "callbacks.progressive: the loader of epoch %d was started before the "
                                "stage's augmentation was set; worker processes may keep the previous one.",
                                trainer.current_epoch)
        self._first_epoch_of_fit = False
        entry = {"epoch": int(trainer.current_epoch), "stage": stage, "dropout": values["dropout"],
                 "drop_path": values["drop_path"], "augmentation": dict(values["augmentation"]), "size": None}
        self.history.append(entry)
        log.info("Progressive learning: epoch %d, stage %d/%d, dropout %s, drop_path %s, augmentation %s",
                 entry["epoch"], stage + 1, self.num_stages, entry["dropout"], entry["drop_path"],
                 entry["augmentation"] or "as configured")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Resize (or crop) the batch in place to the stage's input size."""
        if not isinstance(batch, dict) or not isinstance(batch.get("image"), torch.Tensor):
            raise ConfigError("callbacks.progressive needs batches that are dictionaries with an 'image' tensor.",
                              hint="use medeff's data module, or remove callbacks.progressive.")
        image = batch["image"]
        final = tuple(int(s) for s in image.shape[2:])
        stage = self._stage(trainer)
        target = self.size_for(stage, final)
        if self.history:
            self.history[-1]["size"] = list(target)
        if target == final:
            return
        label = batch.get("label")
        spatial_label = isinstance(label, torch.Tensor) and label.ndim == image.ndim and \
            tuple(label.shape[2:]) == final
        if self.mode == "resize":
            linear = "bilinear" if image.ndim == 4 else "trilinear" if image.ndim == 5 else "linear"
            batch["image"] = F.interpolate(_plain(image), size=target, mode=linear, align_corners=False,
                                           antialias=linear == "bilinear")
            if spatial_label:
                batch["label"] = F.interpolate(_plain(label).float(), size=target, mode="nearest").to(label.dtype)
        else:
            starts = [int(torch.randint(0, f - t + 1, ()).item()) for f, t in zip(final, target)]
            window = (slice(None), slice(None)) + tuple(slice(s, s + t) for s, t in zip(starts, target))
            batch["image"] = _plain(image)[window].contiguous()
            if spatial_label:
                batch["label"] = _plain(label)[window].contiguous()


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor (MONAI MetaTensors carry metadata that a resize would make wrong)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x
