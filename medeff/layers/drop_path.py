"""Stochastic depth (drop-connect): drop a residual branch per sample during training."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath", "drop_path"]


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Zero whole samples of ``x`` with probability ``rate`` and rescale the rest by ``1 / (1 - rate)``."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Module form of :func:`drop_path`.

    Args:
        rate: probability of dropping the branch for one sample.
    """

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:  # noqa: D102
        return f"rate={self.rate:.4f}"
