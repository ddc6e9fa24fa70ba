"""Segmentation (and joint segmentation + classification) network: EfficientNet encoder + U-Net decoder.

Inputs whose spatial size is not a multiple of the encoder's total stride are padded (zeros by default) and
the logits are cropped back, so the output always has the input's spatial size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medeff.models.decoder import UNetDecoder
from medeff.models.efficientnet import EfficientNet
from medeff.models.heads import ClassificationHead, SegmentationHead

__all__ = ["EfficientNetUNet"]


class EfficientNetUNet(nn.Module):
    """EfficientNet encoder, U-Net decoder, segmentation head, optional classification head (joint task).

    Args:
        encoder: an :class:`EfficientNet` built with ``features_only=True``.
        num_classes: segmentation output channels.
        decoder_channels: decoder widths, deepest first (default: sized for ``spatial_dims``).
        deep_supervision: in training mode, return a list of logits at several scales (finest first).
        deep_supervision_levels: how many scales the list holds (including full resolution).
        aux_classes: when given, add a classification head on the deepest feature and return
            ``(seg_logits, class_logits)``.
        aux_dropout: dropout of the classification head.
        pad_mode: ``F.pad`` mode for inputs that are not multiples of the total stride.
        decoder_channels_last: layout of the decoder's 3D convolutions: ``"auto"`` (``channels_last_3d`` on CPU,
            faster there), True or False. The logits are returned in the default (contiguous) layout either way.
        decoder_polyphase: each decoder block's nearest upsampling and first convolution as one polyphase
            convolution of the coarse input (same function up to float rounding, fewer multiply-adds, no upsampled
            tensor; :mod:`medeff.ops.upsample_conv`): ``"auto"`` (on CPU), True or False.

    Raises:
        ValueError: an encoder that is not ``features_only``, or ``deep_supervision_levels`` out of range.
    """

    #: the input expectations of pretrained encoder weights (see :class:`EfficientNet`), None without them
    pretrained_cfg: dict[str, Any] | None = None

    def __init__(
        self,
        encoder: EfficientNet,
        num_classes: int,
        *,
        decoder_channels: Sequence[int] | None = None,
        deep_supervision: bool = False,
        deep_supervision_levels: int = 3,
        aux_classes: int | None = None,
        aux_dropout: float = 0.2,
        pad_mode: str = "constant",
        decoder_channels_last: bool | str = "auto",
        decoder_polyphase: bool | str = "auto",
    ) -> None:
        super().__init__()
        if not encoder.features_only:
            raise ValueError("EfficientNetUNet needs an encoder built with features_only=True.")
        dims = encoder.spatial_dims
        self.spatial_dims = dims
        self.encoder = encoder
        cfg = encoder.layer_config
        self.decoder = UNetDecoder(encoder.feature_info, decoder_channels, spatial_dims=dims, norm=cfg.norm,
                                   act=cfg.act, memory_efficient=cfg.memory_efficient,
                                   level_kernels=encoder.level_kernels, checkpointing=encoder.checkpointing,
                                   channels_last=decoder_channels_last, polyphase=decoder_polyphase)
        self.seg_head = SegmentationHead(dims, self.decoder.out_channels[-1], num_classes)
        self.deep_supervision = deep_supervision
        if deep_supervision and not 2 <= deep_supervision_levels <= len(self.decoder.blocks):
            raise ValueError(f"deep_supervision_levels must lie in 2..{len(self.decoder.blocks)}, "
                             f"got {deep_supervision_levels}.")
        n_aux = deep_supervision_levels - 1 if deep_supervision else 0
        self.ds_heads = nn.ModuleList(
            SegmentationHead(dims, self.decoder.out_channels[-2 - k], num_classes) for k in range(n_aux))
        self.cls_head = (ClassificationHead(dims, encoder.feature_info[-1].channels, aux_classes, aux_dropout)
                         if aux_classes else None)
        self.total_stride = encoder.feature_info[-1].reduction
        self.pad_mode = pad_mode

    @property
    def weights_convention(self):
        """The encoder's :class:`~medeff.models.conventions.WeightsConvention` (see :class:`EfficientNet`)."""
        return self.encoder.weights_convention

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        size = tuple(x.shape[2:])
        target = [math.ceil(s / r) * r for s, r in zip(size, self.total_stride)]
        if list(size) == target:
            return x, size
        pads: list[int] = []
        for s, t in zip(reversed(size), reversed(target)):
            pads += [0, t - s]
        return F.pad(x, pads, mode=self.pad_mode), size

    @staticmethod
    def _crop(y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(y.shape[2:]) == tuple(size):
            return y
        return y[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]

    @staticmethod
    def _logits(y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Crop to ``size`` and return in the default layout (the decoder may run channels-last)."""
        return EfficientNetUNet._crop(y, size).contiguous()

    def forward(self, x: torch.Tensor) -> Any:
        """Segment ``x``.

        Args:
            x: ``(B, in_channels, *spatial)``, any spatial size.

        Returns:
            ``seg_logits`` ``(B, num_classes, *spatial)``; with deep supervision in training mode a list of
            logits, finest first (lower scales cropped to ``ceil(spatial / reduction)``); for the joint task the
            tuple ``(seg, class_logits)`` with ``class_logits`` ``(B, aux_classes)``.
        """
        x, size = self._pad(x)
        feats = self.encoder(x)
        outs = self.decoder(feats, x.shape[2:])
        seg: Any = self._logits(self.seg_head(outs[-1]), size)
        if self.deep_supervision and self.training:
            seg = [seg]
            for k, head in enumerate(self.ds_heads):
                red = self.decoder.reductions[-2 - k]
                seg.append(self._logits(head(outs[-2 - k]), [math.ceil(s / r) for s, r in zip(size, red)]))
        if self.cls_head is not None:
            return seg, self.cls_head(feats[-1])
        return seg
