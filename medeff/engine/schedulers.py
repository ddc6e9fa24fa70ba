"""Learning-rate schedules built as partials from ``conf/scheduler`` (the task supplies the optimizer and steps)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine", "warmup_constant"]


def warmup_cosine(optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 0, warmup_fraction: float = 0.0,
                  min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up from ~0 to the base rate, then cosine decay to ``min_lr_ratio`` of it at ``total_steps``.

    Args:
        optimizer: the optimizer to schedule.
        total_steps: optimizer steps of the whole run (the task passes ``trainer.estimated_stepping_batches``).
        warmup_steps: warm-up steps; ``warmup_fraction`` of ``total_steps`` is used when larger.
        warmup_fraction: warm-up as a fraction of the run.
        min_lr_ratio: final rate as a fraction of the base rate.

    Returns:
        A per-step :class:`~torch.optim.lr_scheduler.LambdaLR`.
    """
    total = max(1, int(total_steps))
    warm = min(total, max(int(warmup_steps), int(round(warmup_fraction * total))))
    floor = float(min_lr_ratio)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def warmup_constant(optimizer: Optimizer, *, total_steps: int, warmup_steps: int = 0,
                    warmup_fraction: float = 0.0) -> LambdaLR:
    """Linear warm-up, then the base rate unchanged (``total_steps`` is accepted for a uniform call)."""
    warm = min(max(1, int(total_steps)), max(int(warmup_steps), int(round(warmup_fraction * max(1, total_steps)))))

    def factor(step: int) -> float:
        return (step + 1) / warm if warm and step < warm else 1.0

    return LambdaLR(optimizer, factor)
