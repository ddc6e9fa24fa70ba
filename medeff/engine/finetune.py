"""Fine-tuning schedules for pretrained encoders: freeze then unfreeze, layer-wise and discriminative learning rates.

``conf/finetune`` builds one :class:`Finetuning` callback (``finetune=none`` builds nothing). It does two things:

* **Parameter groups.** :meth:`Finetuning.param_groups` cuts the network into encoder stages and a head and gives
  each group a learning-rate factor; the task's ``configure_optimizers`` multiplies the optimizer's learning rate
  by it (``lr_scale``), before the scheduler is built, so every group follows the same schedule at its own scale.
  With ``n`` encoder stages numbered ``0`` (the stem) to ``n - 1``, stage ``s`` trains at
  ``lr * encoder_lr_scale * layer_decay ** (n - s)`` and the head at ``lr``.
* **Freeze, then unfreeze.** During the first ``freeze_epochs`` epochs the encoder's parameters do not train
  (``requires_grad`` off, through Lightning's :class:`~lightning.pytorch.callbacks.BaseFinetuning`) and the whole
  encoder stays in eval mode, so it computes the same features for the same input: BatchNorm normalises with the
  pretrained running statistics and does not update them, and dropout and stochastic depth (drop path) are off.
  The head (classifier, its dropout, a U-Net's decoder) trains as usual. From epoch ``freeze_epochs`` on, the
  encoder is back in train mode and everything trains.

Every parameter is in the optimizer from the first step (a frozen one has no gradient, so the optimizer leaves it
and its state alone); unfreezing changes no parameter group. The optimizer's and scheduler's state are therefore
the same whichever epoch a run is resumed from, and whether the encoder is frozen follows from the epoch alone:
a run resumed with ``ckpt_path=last`` in the middle of a schedule replays the uninterrupted run exactly.

Encoder stages of medeff's EfficientNets (classification nets, and the ``encoder`` of U-Nets): the stem
(``conv_stem``, ``bn1``), each stage of ``blocks``, and, in classification nets, the 1x1 head convolution
(``conv_head``, ``bn2``), which pretrained weights include. The head is everything else: the classifier, a U-Net's
decoder and output heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn

from medeff.errors import ConfigError
from medeff.utils.logging import get_logger

__all__ = ["Finetuning", "encoder_stages", "stage_lr_scales"]

log = get_logger(__name__)
_TOP_CONV = ("conv_head", "bn2")  # the classification net's 1x1 head convolution: pretrained, an encoder stage
_NEW_HEAD = ("classifier", "head_drop")  # made for the task: never an encoder stage


def _encoder(net: nn.Module) -> nn.Module:
    enc = getattr(net, "encoder", None)
    if isinstance(enc, nn.Module) and isinstance(getattr(enc, "blocks", None), nn.Sequential):
        return enc
    if isinstance(getattr(net, "blocks", None), nn.Sequential):
        return net
    raise ConfigError(f"finetune needs an EfficientNet encoder (a module with a stem and 'blocks'); the network is "
                      f"a {type(net).__name__}.",
                      hint="use a medeff model (conf/model), or finetune=none for this network.")


def encoder_stages(net: nn.Module) -> list[list[nn.Module]]:
    """The encoder's stages, shallow to deep, each a list of modules: the stem, every stage of ``blocks``, then
    (classification nets) the 1x1 head convolution.

    Raises:
        ConfigError: the network has no EfficientNet encoder.
    """
    enc = _encoder(net)
    blocks = list(enc.blocks)
    top = [getattr(enc, n) for n in _TOP_CONV if isinstance(getattr(enc, n, None), nn.Module)]
    known = {"blocks", *_TOP_CONV, *_NEW_HEAD}
    stem = [m for n, m in enc.named_children() if n not in known]  # conv_stem, bn1, act1
    return [stem, *[[b] for b in blocks], *([top] if top else [])]


def stage_lr_scales(n_stages: int, *, layer_decay: float = 1.0, encoder_lr_scale: float = 1.0) -> list[float]:
    """Learning-rate factors of encoder stages ``0..n_stages-1``: ``encoder_lr_scale * layer_decay ** (n - s)``
    (the head's factor is 1)."""
    return [float(encoder_lr_scale) * float(layer_decay) ** (n_stages - s) for s in range(n_stages)]


def _number(value: Any, key: str, *, low: float, high: float | None = None, integer: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"finetune.{key} must be {'an integer' if integer else 'a number'} {span}, got {value!r}.",
                          hint=f"set finetune.{key} (see conf/finetune/*.yaml), or finetune=none.")
    return int(value) if integer else float(value)


class Finetuning(BaseFinetuning):
    """Freeze the encoder for ``freeze_epochs`` epochs, then train everything; per-stage learning rates.

    Args:
        freeze_epochs: epochs ``0..freeze_epochs-1`` train the head only (0: never frozen).
        layer_decay: learning-rate decay per encoder stage towards the input (1: none), in ``(0, 1]``.
        encoder_lr_scale: learning-rate factor of the whole encoder relative to the head, ``> 0``.

    Raises:
        ConfigError: a value out of range; frozen epochs under several processes (DDP registers only the
            parameters that train when it starts, so an encoder unfrozen later would not be synchronised).
    """

    def __init__(self, freeze_epochs: int = 0, layer_decay: float = 1.0, encoder_lr_scale: float = 1.0) -> None:
        super().__init__()
        self.freeze_epochs = _number(freeze_epochs, "freeze_epochs", low=0, integer=True)
        self.layer_decay = _number(layer_decay, "layer_decay", low=0, high=1)
        self.encoder_lr_scale = _number(encoder_lr_scale, "encoder_lr_scale", low=0)
        if self.layer_decay == 0 or self.encoder_lr_scale == 0:
            raise ConfigError("finetune.layer_decay and finetune.encoder_lr_scale must be > 0 (a zero learning "
                              "rate is a frozen encoder).", hint="use finetune.freeze_epochs to freeze it.")
        self.frozen = False
        self._frozen_modules: list[nn.Module] = []

    @property
    def settings(self) -> dict[str, Any]:
        """The schedule as plain values (stored with the callback's state in every checkpoint)."""
        return {"freeze_epochs": self.freeze_epochs, "layer_decay": self.layer_decay,
                "encoder_lr_scale": self.encoder_lr_scale}

    # ---- parameter groups -------------------------------------------------------------------------------------
    def param_groups(self, net: nn.Module) -> list[dict[str, Any]]:
        """Optimizer parameter groups of ``net``: one per encoder stage, then the head; each with ``name`` and
        ``lr_scale`` (the factor on the optimizer's learning rate). Every parameter is listed, frozen or not."""
        stages = encoder_stages(net)
        scales = stage_lr_scales(len(stages), layer_decay=self.layer_decay, encoder_lr_scale=self.encoder_lr_scale)
        groups, seen = [], set()
        for s, (modules, scale) in enumerate(zip(stages, scales)):
            params = [p for m in modules for p in m.parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                groups.append({"params": params, "lr_scale": scale, "name": f"encoder.stage{s}"})
        head = [p for p in net.parameters() if id(p) not in seen]
        if head:
            groups.append({"params": head, "lr_scale": 1.0, "name": "head"})
        return groups

    # ---- freezing ---------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.freeze_epochs > 0 and trainer.world_size > 1:
            raise ConfigError(f"finetune.freeze_epochs={self.freeze_epochs} cannot be used with {trainer.world_size} "
                              "processes: DDP synchronises only the parameters that train when it starts, so the "
                              "encoder would train apart on each process after unfreezing.",
                              hint="train on one device, or set finetune.freeze_epochs=0 (learning-rate decay "
                                   "alone works with DDP).")
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        if self.freeze_epochs <= 0:
            return
        modules = [m for stage in encoder_stages(pl_module.net) for m in stage]
        self.freeze(modules, train_bn=False)
        self._frozen_modules = modules
        self.frozen = True  # the encoder goes to eval mode when each training epoch and batch starts
        log.info("finetune: encoder frozen for epochs 0..%d (in eval mode: BatchNorm statistics kept, no dropout "
                 "or drop path).", self.freeze_epochs - 1)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        in_optimizer = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        if any(id(p) not in in_optimizer for stage in encoder_stages(pl_module.net) for m in stage
               for p in m.parameters()):
            raise ConfigError("The fine-tuning callback's encoder parameters are not all in the optimizer, so the "
                              "encoder would never train after unfreezing: the callback was not built from the "
                              "'finetune' config group (which also gives the task its parameter groups).",
                              hint="choose the schedule with finetune=<name> (conf/finetune), not under callbacks.")

    def _frozen_eval(self) -> None:
        for m in self._frozen_modules:
            m.eval()

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer) -> None:
        # ">=": a run resumed after the unfreezing epoch unfreezes at its first epoch
        if self.frozen and epoch >= self.freeze_epochs:
            modules = [m for stage in encoder_stages(pl_module.net) for m in stage]
            self.make_trainable(modules)
            for m in self._frozen_modules:
                m.train(pl_module.training)
            self._frozen_modules, self.frozen = [], False
            log.info("finetune: epoch %d: encoder unfrozen.", epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._frozen_eval()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._frozen_eval()  # Lightning puts the module back in train mode after validation

    # ---- checkpoint -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "settings": self.settings}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = dict(state_dict)
        saved = state.pop("settings", None)
        if saved is not None and saved != self.settings:
            log.warning("finetune: the checkpoint was trained with %s; this run continues with %s.", saved,
                        self.settings)
        super().load_state_dict(state)
