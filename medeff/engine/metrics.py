"""Per-epoch validation metrics: AUC and balanced accuracy (classification), Dice per label (segmentation).

Under DDP every rank sees only its share of the validation set, and Lightning's ``DistributedSampler`` pads the
shares to equal length by repeating items. The tasks therefore score nothing per rank: each rank keeps, per item,
its predictions, target and key (case id and row), :func:`gather_objects` collects them from all ranks, and
:func:`first_occurrences` drops the repeated items before AUC, balanced accuracy or Dice are computed, so every
rank computes the metrics of the whole validation set, each item counted once.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

__all__ = ["class_probabilities", "aggregate_by_case", "classification_metrics", "DiceTracker", "gather_objects",
           "first_occurrences", "item_keys", "world_size"]


def world_size() -> int:
    """Number of processes of the initialised ``torch.distributed`` group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank in rank order (``torch.distributed.all_gather_object``); ``[obj]`` without DDP."""
    import torch.distributed as dist

    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def first_occurrences(keys: Sequence[Hashable]) -> np.ndarray:
    """Indices of the first item of every distinct key, in order (drops the sampler's repeated items)."""
    seen: set[Hashable] = set()
    keep = []
    for i, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def item_keys(batch: Mapping[str, Any], n: int) -> list[tuple[str, int | None]] | None:
    """One key per item of a validation batch: ``(case_id, row)``, row None for items without one (volumes).

    Returns:
        The keys, or None when the batch has no ``case_id``.
    """
    cases = batch.get("case_id")
    if cases is None:
        return None
    cases = [str(c) for c in (cases if isinstance(cases, (list, tuple)) else [cases] * n)]
    rows = batch.get("row")
    if rows is None:
        return [(c, None) for c in cases]
    rows = rows.reshape(-1).tolist() if hasattr(rows, "reshape") else list(rows)
    return [(c, int(r)) for c, r in zip(cases, rows)]


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
    """Accumulates Dice per item and label over an epoch (labels absent from a reference give NaN and are skipped).

    Args:
        num_classes: labels including background.
        include_background: whether label 0 is reported.
    """

    def __init__(self, num_classes: int, include_background: bool = False) -> None:
        self.num_classes = int(num_classes)
        self.include_background = include_background
        self.metric = DiceMetric(include_background=include_background, reduction="none", ignore_empty=True)
        self.keys: list[Hashable | None] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor, keys: Sequence[Hashable] | None = None) -> None:
        """``logits (B, C, *spatial)``, ``target (B, 1, *spatial)`` label values; ``keys``: one id per item."""
        pred = one_hot(logits.argmax(dim=1, keepdim=True), self.num_classes)
        self.metric(pred, one_hot(target.long(), self.num_classes))
        n = int(logits.shape[0])
        self.keys += list(keys) if keys is not None else [None] * n

    def compute(self) -> list[float]:
        """Mean Dice per reported label over the items of all ranks, each key once (NaN where no item had the
        label); resets the tracker."""
        width = self.num_classes - (0 if self.include_background else 1)
        buffer = self.metric.get_buffer()
        local = np.zeros((0, width)) if buffer is None else torch.as_tensor(buffer).float().cpu().numpy()
        parts = gather_objects((local.reshape(-1, width), self.keys))
        self.metric.reset()
        self.keys = []
        values = np.concatenate([p[0] for p in parts])
        keys = [k if k is not None else f"rank{r}-item{i}" for r, p in enumerate(parts) for i, k in enumerate(p[1])]
        values = values[first_occurrences(keys)]
        out = []
        for col in values.T:
            finite = col[np.isfinite(col)]
            out.append(float(finite.mean()) if len(finite) else float("nan"))
        return out
