"""Losses for the Lightning tasks: classification (CE, BCE, focal) and segmentation (Dice+CE, deep supervision)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from medeff.errors import ConfigError

__all__ = ["FocalLoss", "ClassificationLoss", "DeepSupervisionLoss", "CLASSIFICATION_LOSSES"]

CLASSIFICATION_LOSSES = ("ce", "bce", "focal")


class FocalLoss(nn.Module):
    """Multi-class focal loss ``(1 - p_t)^gamma * CE`` on logits ``(B, K)`` and class indices ``(B,)``.

    Args:
        gamma: focusing exponent (0 gives weighted cross-entropy).
        weight: optional per-class weights ``(K,)``.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("weight", weight if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        logp_t = logp.gather(1, target.long()[:, None])[:, 0]
        loss = -((1.0 - logp_t.exp()) ** self.gamma) * logp_t
        if self.weight is not None:
            w = self.weight[target.long()]
            return (loss * w).sum() / w.sum().clamp_min(1e-12)
        return loss.mean()


class ClassificationLoss(nn.Module):
    """Classification loss chosen by name, with optional class weights.

    ``ce`` and ``focal`` take logits ``(B, K)`` with K >= 2; ``bce`` takes K = 1 (binary, one logit) or K >= 2
    (one-vs-rest on one-hot targets).

    Args:
        name: ``ce``, ``bce`` or ``focal``.
        num_classes: K, the number of logits.
        class_weights: per-class weights (K values; for K = 1 the weight of the positive class).
        label_smoothing: CE label smoothing.
        focal_gamma: focal exponent.

    Raises:
        ConfigError: unknown name, or weights of the wrong length.
    """

    def __init__(self, name: str = "ce", *, num_classes: int, class_weights: Sequence[float] | None = None,
                 label_smoothing: float = 0.0, focal_gamma: float = 2.0) -> None:
        super().__init__()
        if name not in CLASSIFICATION_LOSSES:
            raise ConfigError(f"Unknown task.loss {name!r}.", hint=f"use one of {CLASSIFICATION_LOSSES}.")
        if num_classes == 1 and name != "bce":
            raise ConfigError(f"task.loss={name} needs num_classes >= 2 (one logit per class).",
                              hint="use task.loss=bce for a single logit, or data.num_classes=2.")
        w = None
        if class_weights is not None:
            w = torch.as_tensor(list(class_weights), dtype=torch.float32)
            if w.numel() != num_classes:
                raise ConfigError(f"task.class_weights has {w.numel()} values for {num_classes} classes.",
                                  hint="give one weight per class, or null.")
        self.name, self.num_classes = name, int(num_classes)
        if name == "ce":
            self.fn = nn.CrossEntropyLoss(weight=w, label_smoothing=float(label_smoothing))
        elif name == "focal":
            self.fn = FocalLoss(focal_gamma, weight=w)
        else:
            self.fn = nn.BCEWithLogitsLoss(pos_weight=w)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of ``logits`` against class indices ``target``, or against ``soft`` when given.

        ``soft`` (binary tasks, ``data.soft_label``) is the target probability of the positive class per item: the
        cross-entropy (or binary cross-entropy) against ``[1 - p, p]``, with the class weights and label smoothing.
        """
        if soft is not None:
            return self._soft(logits, soft.float().reshape(-1))
        if self.name != "bce":
            return self.fn(logits.float(), target.long())
        if self.num_classes == 1:
            return self.fn(logits.float().reshape(-1), target.float().reshape(-1))
        return self.fn(logits.float(), F.one_hot(target.long(), self.num_classes).float())

    def _soft(self, logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if self.name == "focal":
            raise ConfigError("data.soft_label trains on graded targets; task.loss=focal takes class indices only.",
                              hint="use task.loss=ce (or bce) with data.soft_label, or set data.soft_label=null.")
        if self.num_classes == 1:
            return self.fn(logits.float().reshape(-1), p)
        if self.num_classes != 2:
            raise ConfigError(f"data.soft_label grades a binary task; the network has {self.num_classes} logits.",
                              hint="set data.num_classes=2, or data.soft_label=null.")
        t = torch.stack([1.0 - p, p], dim=1)
        if self.name == "bce":  # one-vs-rest on the two logits, as with one-hot hard targets
            return self.fn(logits.float(), t)
        # the weighted, smoothed cross-entropy of nn.CrossEntropyLoss with class indices, generalised to a target
        # distribution: equal to it for targets of 0 and 1 (same normaliser: the summed weight of the targets)
        w = self.fn.weight if self.fn.weight is not None else torch.ones(2, device=logits.device)
        w = w.to(device=logits.device, dtype=torch.float32)
        nll = -F.log_softmax(logits.float(), dim=1) * w
        eps = float(self.fn.label_smoothing)
        total = (1.0 - eps) * (t * nll).sum() + eps / 2.0 * nll.sum()
        return total / (t * w).sum().clamp_min(1e-12)


def _resize_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(target.shape[2:]) == tuple(size):
        return target
    return F.interpolate(target.float(), size=tuple(size), mode="nearest").to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """Dice + cross-entropy (MONAI ``DiceCELoss``) summed over decoder scales with normalised weights.

    Args:
        weights: weight of each output scale, finest first (only as many as the net returns are used).
        include_background: whether Dice counts label 0.
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the CE term.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 0.5, 0.25, 0.125), *, include_background: bool = False,
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__()
        self.weights = [float(w) for w in weights] or [1.0]
        self.base = DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background,
                               lambda_dice=float(lambda_dice), lambda_ce=float(lambda_ce))

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Weighted loss over scales.

        Args:
            outputs: logits ``(B, C, *spatial)`` or a list of them, finest first.
            target: label values ``(B, 1, *spatial)`` (downsampled by nearest neighbour for coarser outputs).
        """
        outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        weights = self.weights[: len(outs)] + [0.0] * max(0, len(outs) - len(self.weights))
        total = sum(weights)
        loss = outs[0].new_zeros(())
        for w, out in zip(weights, outs):
            if w > 0:
                loss = loss + (w / total) * self.base(out.float(), _resize_target(target, out.shape[2:]))
        return loss
