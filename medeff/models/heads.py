"""Output heads: classification (pool, dropout, linear) and segmentation (1x1 conv to class logits)."""

from __future__ import annotations

import torch
from torch import nn

from medeff.layers import make_conv, make_dropout

__all__ = ["ClassificationHead", "SegmentationHead"]


class ClassificationHead(nn.Module):
    """Global average pool, dropout, linear.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: feature channels.
        num_classes: outputs.
        dropout: dropout rate before the linear layer.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.drop = make_dropout(spatial_dims, dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial) -> (B, num_classes)``."""
        return self.fc(self.drop(x.mean(dim=tuple(range(2, x.ndim)))))


class SegmentationHead(nn.Module):
    """1x1 convolution to per-voxel class logits.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: decoder channels.
        num_classes: output channels.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = make_conv(spatial_dims, in_channels, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial) -> (B, num_classes, *spatial)``."""
        return self.conv(x)
