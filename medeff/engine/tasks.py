"""Lightning tasks: classification, segmentation and joint segmentation + classification.

Every task receives a built network (``net``, from ``conf/model`` through ``medeff.models.create_model``) and
partial factories for the optimizer and the scheduler (``conf/optimizer``, ``conf/scheduler``); nothing about the
architecture or the hyperparameters is fixed here. Metrics are logged with slash keys: ``train/loss``,
``val/loss``, ``val/auc``, ``val/balanced_accuracy``, ``val/dice``, ``val/dice_<label>``.

Under DDP the epoch metrics (AUC, balanced accuracy, Dice) are computed from the predictions of all ranks, each
validation item once (see :mod:`medeff.engine.metrics`), so every rank logs the metrics of the whole validation
set and the best checkpoint is chosen on all of it. ``val/loss`` is the mean of the ranks' batch losses
(``sync_dist``), which counts the items the sampler repeats to even out the shares.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from medeff.engine.inference import check_pad, first_output, sliding_window
from medeff.engine.losses import ClassificationLoss, DeepSupervisionLoss
from medeff.engine.metrics import (DiceTracker, aggregate_by_case, class_probabilities, classification_metrics,
                                  first_occurrences, gather_objects, item_keys, world_size)
from medeff.errors import ConfigError
from medeff.utils.logging import get_logger
from medeff.utils.options import look_up

__all__ = ["BaseTask", "ClassificationTask", "SegmentationTask", "JointTask", "TASK_KINDS", "SW_MODES"]

SW_MODES = ("gaussian", "constant")  # MONAI sliding-window blending modes
log = get_logger(__name__)


def _accepts(fn: Callable, name: str) -> bool:
    target = fn.func if isinstance(fn, functools.partial) else fn
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _configured(group: str, factory: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call an optimizer / scheduler factory; a bad value from ``conf/<group>`` becomes a ConfigError naming it."""
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        target = getattr(getattr(factory, "func", factory), "__name__", str(factory))
        raise ConfigError(f"Cannot build the {group} ({target}) from conf/{group}: {exc}.",
                          hint=f"check the values of '{group}.*' in the config and its overrides.") from exc


class BaseTask(L.LightningModule):
    """What every task shares: the injected net, optimizer/scheduler factories and the checkpoint metadata.

    Args:
        net: the network.
        optimizer: ``optimizer(params) -> torch.optim.Optimizer`` (a Hydra partial); AdamW(1e-3) when None.
        scheduler: ``scheduler(optimizer[, total_steps=...]) -> LRScheduler`` (a Hydra partial) or None.
        scheduler_interval: ``step`` or ``epoch``.
        monitor: metric the checkpoint callback and plateau schedulers watch (e.g. ``val/auc``).
        monitor_mode: ``max`` or ``min``.
        param_groups: ``param_groups(net) -> [{"params": [...], "lr_scale": f, ...}, ...]``: the optimizer's
            parameter groups (e.g. :meth:`medeff.engine.finetune.Finetuning.param_groups`); each group's learning
            rate is the optimizer's times its ``lr_scale``. None: one group of the parameters that train.
    """

    kind = "base"

    def __init__(self, net: nn.Module, *, optimizer: Callable | None = None, scheduler: Callable | None = None,
                 scheduler_interval: str = "step", monitor: str | None = None, monitor_mode: str = "max",
                 param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise ConfigError(f"The task's net must be a torch nn.Module, got {type(net).__name__}.",
                              hint="check conf/model: its _target_ must build a network (not a partial).")
        if scheduler_interval not in ("step", "epoch"):
            raise ConfigError(f"scheduler interval must be 'step' or 'epoch', got {scheduler_interval!r}.")
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.param_groups = param_groups
        self.medeff_meta: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor):
        return self.net(x)

    def _optimizer_params(self) -> list:
        if self.param_groups is None:
            return [p for p in self.parameters() if p.requires_grad]
        groups = self.param_groups(self.net)
        listed = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in listed]
        return groups + ([{"params": rest, "lr_scale": 1.0, "name": "other"}] if rest else [])

    def configure_optimizers(self):
        params = self._optimizer_params()
        opt = _configured("optimizer", self.optimizer_factory, params) if self.optimizer_factory \
            else torch.optim.AdamW(params, lr=1e-3)
        for group in opt.param_groups:  # before the scheduler, which takes each group's lr as its base
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return opt
        kwargs = {}
        if _accepts(self.scheduler_factory, "total_steps"):
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        sched = _configured("scheduler", self.scheduler_factory, opt, **kwargs)
        cfg = {"scheduler": sched, "interval": self.scheduler_interval}
        if self.monitor:
            cfg["monitor"] = self.monitor
        return {"optimizer": opt, "lr_scheduler": cfg}

    def _keys(self, batch: dict[str, Any], n: int) -> list[tuple] | None:
        """Per-item keys that identify a validation item across ranks (None when the batch has no case ids)."""
        keys = item_keys(batch, n)
        if keys is None and world_size() > 1 and not getattr(self, "_warned_keys", False):
            self._warned_keys = True
            log.warning("Validation batches carry no 'case_id': under DDP the items the sampler repeats to even "
                        "out the ranks' shares cannot be recognised and are counted twice in the epoch metrics.")
        return keys

    def _gather_val(self, store: dict[str, list]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Probabilities, targets and case ids of the items of all ranks, each item once, in rank order.

        ``store`` holds per batch ``probs`` and ``targets`` arrays and per item ``keys`` (None when unknown).
        An item without a key is its own case.
        """
        n_local = sum(len(p) for p in store["probs"])
        rank_items = (np.concatenate(store["probs"]) if n_local else None,
                      np.concatenate(store["targets"]) if n_local else None, list(store["keys"]))
        parts = [(r, p) for r, p in enumerate(gather_objects(rank_items)) if p[0] is not None]
        if not parts:
            return np.zeros((0, 2)), np.zeros((0,)), []
        keys = [k if k is not None else (f"rank{r}-item{i}", None) for r, p in parts for i, k in enumerate(p[2])]
        cases = [k[0] for k in keys]
        keep = first_occurrences(keys)
        probs = np.concatenate([p[0] for _, p in parts])[keep]
        targets = np.concatenate([p[1] for _, p in parts])[keep]
        return probs, targets, [cases[i] for i in keep]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Attach the self-description (config, class/label maps, preprocessing, versions) to every checkpoint."""
        if self.medeff_meta is not None:
            checkpoint["medeff"] = self.medeff_meta


class ClassificationTask(BaseTask):
    """Image classification: logits ``(B, K)``; per-epoch AUC and balanced accuracy per case.

    Validation items of one case (slices of a nodule) are averaged before the case-level metrics.

    Args:
        net: network returning logits ``(B, K)``.
        num_classes: K.
        loss: ``ce``, ``bce`` or ``focal``.
        class_weights: per-class loss weights.
        label_smoothing: CE label smoothing.
        focal_gamma: focal exponent.
        threshold: triage threshold on the positive-class probability (stored for ``medeff predict``).
        positive_classes: class indices whose probabilities sum to the triage score (default: the last class).
        kind: must be ``classification`` (lets the config name the task).
        **base: :class:`BaseTask` arguments.
    """

    kind = "classification"

    def __init__(self, net: nn.Module, *, num_classes: int, loss: str = "ce",
                 class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0, focal_gamma: float = 2.0,
                 threshold: float = 0.5, positive_classes: Sequence[int] | None = None,
                 kind: str = "classification", **base: Any) -> None:
        super().__init__(net, **base)
        if kind != self.kind:
            raise ConfigError(f"task.kind={kind!r} does not match {type(self).__name__}.",
                              hint=f"use task.kind={self.kind}.")
        self.num_classes = int(num_classes)
        self.loss_fn = ClassificationLoss(loss, num_classes=self.num_classes, class_weights=class_weights,
                                          label_smoothing=label_smoothing, focal_gamma=focal_gamma)
        self.threshold = float(threshold)
        self.positive_classes = list(positive_classes) if positive_classes else [max(self.num_classes, 2) - 1]
        self._val: dict[str, list] = {"probs": [], "targets": [], "keys": []}

    def _step_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return first_output(self.net(batch["image"]))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self._step_logits(batch)
        loss = self.loss_fn(logits, batch["label"], soft=batch.get("soft_label"))  # graded targets: data.soft_label
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self._step_logits(batch)
        loss = self.loss_fn(logits, batch["label"])
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=logits.shape[0], sync_dist=True)
        n = logits.shape[0]
        self._val["probs"].append(class_probabilities(logits).detach().cpu().numpy())
        self._val["targets"].append(batch["label"].detach().cpu().numpy().reshape(-1))
        self._val["keys"] += self._keys(batch, n) or [None] * n

    def on_validation_epoch_end(self) -> None:
        store, self._val = self._val, {"probs": [], "targets": [], "keys": []}
        probs, targets, cases = self._gather_val(store)
        if not cases:
            return
        _, p_case, t_case, _ = aggregate_by_case(probs, cases, targets)  # slices of one case are averaged
        for name, value in classification_metrics(p_case, t_case).items():
            self.log(f"val/{name}", value, prog_bar=name == "auc", sync_dist=True)


class SegmentationTask(BaseTask):
    """Semantic segmentation: Dice + CE with deep supervision; validation by Gaussian sliding window.

    Args:
        net: network returning logits ``(B, C, *spatial)`` (a list of scales in train mode with deep supervision).
        num_classes: labels including background.
        label_names: names of the labels in value order (for ``val/dice_<name>``).
        include_background: whether Dice (loss and metric) counts label 0.
        lambda_dice: Dice weight.
        lambda_ce: cross-entropy weight.
        deep_supervision_weights: weights of the output scales, finest first.
        roi_size: sliding-window size for validation (the training patch).
        sw_batch_size: windows per forward pass.
        overlap: window overlap.
        sw_mode: ``gaussian`` or ``constant`` blending.
        sw_pad: how an image smaller than the window is padded: ``min`` (each channel's minimum: air/background),
            ``replicate`` or a number (see :func:`medeff.engine.inference.sliding_window`).
        kind: must be ``segmentation``.
        **base: :class:`BaseTask` arguments.
    """

    kind = "segmentation"

    def __init__(self, net: nn.Module, *, num_classes: int, label_names: Sequence[str] | None = None,
                 include_background: bool = False, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 deep_supervision_weights: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
                 roi_size: Sequence[int] | None = None, sw_batch_size: int = 2, overlap: float = 0.5,
                 sw_mode: str = "gaussian", sw_pad: str | float = "min", kind: str = "segmentation",
                 **base: Any) -> None:
        super().__init__(net, **base)
        if kind != self.kind:
            raise ConfigError(f"task.kind={kind!r} does not match {type(self).__name__}.",
                              hint=f"use task.kind={self.kind}.")
        if not roi_size:
            raise ConfigError("Segmentation needs a sliding-window size (task.roi_size).",
                              hint="set data.patch_size; task.roi_size follows it.")
        self.num_classes = int(num_classes)
        self.label_names = list(label_names) if label_names else [f"label{i}" for i in range(self.num_classes)]
        self.include_background = include_background
        self.seg_loss = DeepSupervisionLoss(deep_supervision_weights, include_background=include_background,
                                            lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        self.roi_size = [int(r) for r in roi_size]
        look_up(sw_mode, SW_MODES, what="sliding-window mode", key="task.sw_mode")  # not after an epoch of training
        self.sw = {"sw_batch_size": int(sw_batch_size), "overlap": float(overlap), "mode": sw_mode,
                   "pad": check_pad(sw_pad)}
        self.dice = DiceTracker(self.num_classes, include_background)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.net(batch["image"])
        loss = self.seg_loss(out, batch["label"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def _log_dice(self) -> None:
        values = self.dice.compute()
        names = self.label_names[(0 if self.include_background else 1):]
        finite = [v for v in values if np.isfinite(v)]
        self.log("val/dice", float(np.mean(finite)) if finite else float("nan"), prog_bar=True, sync_dist=True)
        for name, v in zip(names, values):
            self.log(f"val/dice_{name}", v, sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = sliding_window(self.net, batch["image"], roi_size=self.roi_size, **self.sw)
        self.log("val/loss", self.seg_loss(logits, batch["label"]), on_epoch=True, batch_size=logits.shape[0],
                 sync_dist=True)
        self.dice.update(logits, batch["label"], self._keys(batch, logits.shape[0]))

    def on_validation_epoch_end(self) -> None:
        self._log_dice()


class JointTask(SegmentationTask):
    """Segmentation and classification from one net returning ``(seg_logits, class_logits)``.

    Args:
        net: joint network.
        num_classes: segmentation labels including background.
        num_class_outputs: classification classes K.
        seg_weight: weight of the segmentation loss.
        cls_weight: weight of the classification loss.
        loss: classification loss name.
        class_weights: classification class weights.
        threshold: triage threshold on the positive-class probability.
        positive_classes: classes summed into the triage score.
        kind: must be ``joint``.
        **seg: :class:`SegmentationTask` arguments.
    """

    kind = "joint"

    def __init__(self, net: nn.Module, *, num_classes: int, num_class_outputs: int = 2, seg_weight: float = 1.0,
                 cls_weight: float = 1.0, loss: str = "ce", class_weights: Sequence[float] | None = None,
                 threshold: float = 0.5, positive_classes: Sequence[int] | None = None, kind: str = "joint",
                 **seg: Any) -> None:
        if kind != self.kind:
            raise ConfigError(f"task.kind={kind!r} does not match {type(self).__name__}.",
                              hint=f"use task.kind={self.kind}.")
        super().__init__(net, num_classes=num_classes, kind=kind, **seg)
        self.num_class_outputs = int(num_class_outputs)
        self.cls_loss = ClassificationLoss(loss, num_classes=self.num_class_outputs, class_weights=class_weights)
        self.seg_weight, self.cls_weight = float(seg_weight), float(cls_weight)
        self.threshold = float(threshold)
        self.positive_classes = list(positive_classes) if positive_classes else [self.num_class_outputs - 1]
        self._val: dict[str, list] = {"probs": [], "targets": [], "keys": []}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        seg, cls = self.net(batch["image"])
        loss_seg = self.seg_loss(seg, batch["label"])
        loss_cls = self.cls_loss(cls, batch["class"])
        loss = self.seg_weight * loss_seg + self.cls_weight * loss_cls
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("train/loss_seg", loss_seg, on_epoch=True, batch_size=bs)
        self.log("train/loss_cls", loss_cls, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        seg, cls = sliding_window(self.net, batch["image"], roi_size=self.roi_size, joint=True, **self.sw)
        loss = self.seg_weight * self.seg_loss(seg, batch["label"]) + self.cls_weight * self.cls_loss(cls,
                                                                                                        batch["class"])
        self.log("val/loss", loss, on_epoch=True, batch_size=seg.shape[0], sync_dist=True)
        keys = self._keys(batch, seg.shape[0])
        self.dice.update(seg, batch["label"], keys)
        self._val["probs"].append(class_probabilities(cls).cpu().numpy())
        self._val["targets"].append(batch["class"].cpu().numpy().reshape(-1))
        self._val["keys"] += keys or [None] * seg.shape[0]

    def on_validation_epoch_end(self) -> None:
        self._log_dice()
        store, self._val = self._val, {"probs": [], "targets": [], "keys": []}
        probs, targets, keys = self._gather_val(store)
        if keys:
            for name, value in classification_metrics(probs, targets).items():
                self.log(f"val/{name}", value, sync_dist=True)


TASK_KINDS = {"classification": ClassificationTask, "segmentation": SegmentationTask, "joint": JointTask}
