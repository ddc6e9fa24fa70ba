"""Per-epoch validation metrics: AUC and balanced accuracy (classification), Dice per label (segmentation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

__all__ = ["class_probabilities", "aggregate_by_case", "classification_metrics", "DiceTracker"]


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, K)`` -> probabilities ``(B, max(K, 2))``: softmax for K >= 2, ``[1 - p, p]`` for K = 1."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1.0 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def aggregate_by_case(probs: np.ndarray, case_ids: Sequence[str], targets: np.ndarray | None = None):
    """Mean probabilities over the items of each case (slices of a nodule), in first-seen case order.

    Returns:
        ``(case_ids, probs (N_cases, K), targets (N_cases,) or None, counts (N_cases,))``.
    """
    order: dict[str, list[int]] = {}
    for i, cid in enumerate(case_ids):
        order.setdefault(str(cid), []).append(i)
    ids = list(order)
    p = np.stack([probs[idx].mean(axis=0) for idx in order.values()]) if ids else np.zeros((0, probs.shape[1]))
    t = None if targets is None else np.asarray([targets[idx[0]] for idx in order.values()])
    counts = np.asarray([len(idx) for idx in order.values()])
    return ids, p, t, counts


def classification_metrics(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """AUC (one-vs-rest macro for K > 2), balanced accuracy and accuracy; AUC is NaN when one class is absent."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    targets = np.asarray(targets).astype(int)
    pred = probs.argmax(axis=1)
    out = {"accuracy": float((pred == targets).mean()) if len(targets) else float("nan"),
           "balanced_accuracy": float("nan"), "auc": float("nan")}
    if len(targets):
        out["balanced_accuracy"] = float(balanced_accuracy_score(targets, pred))
    present = np.unique(targets)
    if len(present) >= 2:
        if probs.shape[1] == 2:
            out["auc"] = float(roc_auc_score(targets, probs[:, 1]))
        elif len(present) == probs.shape[1]:
            out["auc"] = float(roc_auc_score(targets, probs, multi_class="ovr", average="macro"))
    return out


class DiceTracker:
    """Accumulates Dice per label over an epoch (labels absent from a reference give NaN and are skipped).

    Args:
        num_classes: labels including background.
        include_background: whether label 0 is reported.
    """

    def __init__(self, num_classes: int, include_background: bool = False) -> None:
        self.num_classes = int(num_classes)
        self.include_background = include_background
        self.metric = DiceMetric(include_background=include_background, reduction="mean_batch", ignore_empty=True)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """``logits (B, C, *spatial)``, ``target (B, 1, *spatial)`` label values."""
        pred = one_hot(logits.argmax(dim=1, keepdim=True), self.num_classes)
        self.metric(pred, one_hot(target.long(), self.num_classes))

    def compute(self) -> list[float]:
        """Mean Dice per reported label (NaN where no case had it); resets the tracker."""
        try:
            values = self.metric.aggregate()
        except (RuntimeError, ValueError, IndexError):  # nothing accumulated
            values = torch.full((self.num_classes - (0 if self.include_background else 1),), float("nan"))
        self.metric.reset()
        return [float(v) for v in torch.as_tensor(values).reshape(-1)]
