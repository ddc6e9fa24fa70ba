"""U-Net decoder sized from an encoder's ``feature_info`` (no hand-written channel tables)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from medeff.layers import norm_act
from medeff.models.blocks import LayerConfig, check_switch, recompute
from medeff.models.features import FeatureInfo
from medeff.ops.upsample_conv import nearest_scale, polyphase_ready, upsample_conv

__all__ = ["DEFAULT_DECODER_CHANNELS", "POLYPHASE_MIN_VOXELS", "DecoderBlock", "UNetDecoder",
           "default_decoder_channels"]

#: Decoder widths, deepest level first. 3D halves the 2D widths: the full-resolution levels dominate the cost
#: of a 3D U-Net (memory and FLOPs grow with the voxel count), so they are kept narrow.
DEFAULT_DECODER_CHANNELS = {1: (256, 128, 64, 32, 16), 2: (256, 128, 64, 32, 16), 3: (128, 64, 32, 16, 8)}
#: ``polyphase="auto"`` takes the polyphase path from this many coarse voxels (batch x spatial) up. Measured per
#: block, forward + backward on 2 cores: 0.41-0.72x the plain block from 2048 voxels (96^3-128^3 3D U-Nets at batch
#: 1-2, 2D at 224^2 x 8 and 512^2 x 2), 1.07-5x slower below (the deep levels: the 8x wider coarse convolution of a
#: few hundred voxels, and aten's batch-1 reference kernel for small 3D convolutions); docs/ops.md.
POLYPHASE_MIN_VOXELS = 2048


def default_decoder_channels(spatial_dims: int, num_blocks: int) -> tuple[int, ...]:
    """Default decoder widths for ``num_blocks`` decoder levels (deepest first)."""
    base = DEFAULT_DECODER_CHANNELS[spatial_dims]
    if num_blocks <= len(base):
        return base[len(base) - num_blocks:]
    return (base[0],) * (num_blocks - len(base)) + base


class _ConvNormAct(nn.Module):
    def __init__(self, cfg: LayerConfig, cin: int, cout: int, kernel: Sequence[int] | int = 3) -> None:
        super().__init__()
        self.conv = cfg.conv(cin, cout, kernel)
        self.norm = cfg.bn(cout)
        self.act = cfg.make_act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_act(self.norm, self.act, self.conv(x))


def _exporting() -> bool:
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _decoder_layout(channels_last: bool | str, x: torch.Tensor) -> torch.memory_format | None:
    """The memory format a decoder block runs in, or None to leave the input's (always None while exporting)."""
    if x.dim() != 5 or _exporting():
        return None
    if channels_last == "auto":
        return torch.channels_last_3d if x.device.type == "cpu" else None
    return torch.channels_last_3d if channels_last else None


class DecoderBlock(nn.Module):
    """Upsample (nearest, to the skip's size), concatenate the skip, then two conv-norm-act layers.

    Args:
        cfg: layer config.
        in_channels: channels coming from the deeper level.
        skip_channels: channels of the skip feature (0 for none).
        out_channels: output channels.
        kernel: conv kernel, int or per axis.
        channels_last: run the convolutions of 3D inputs in ``channels_last_3d`` layout: ``"auto"`` (on CPU,
            where oneDNN's convolutions with few channels at full resolution are 25-40% faster in that layout),
            True or False.
        polyphase: compute the upsampling and the first convolution as one polyphase convolution of the coarse
            input (:func:`medeff.ops.upsample_conv.upsample_conv`: the same function up to float rounding, 8/27 of
            the multiply-adds on the upsampled part of a 3x3x3 layer, no upsampled tensor): ``"auto"`` (on CPU,
            where it was measured, for inputs of at least :data:`POLYPHASE_MIN_VOXELS` voxels over the batch),
            True (every input) or False. It applies when the skip's size is an integer multiple of the input's and
            the convolution is a plain zero-padded one; never while tracing, scripting, exporting or compiling
            (``torch.compile`` gets the plain upsample-and-convolve graph).
    """

    def __init__(self, cfg: LayerConfig, in_channels: int, skip_channels: int, out_channels: int,
                 kernel: Sequence[int] | int = 3, channels_last: bool | str = "auto",
                 polyphase: bool | str = "auto") -> None:
        super().__init__()
        check_switch("decoder channels_last", channels_last)
        check_switch("decoder polyphase", polyphase)
        self.channels_last = channels_last
        self.polyphase = polyphase
        self.conv1 = _ConvNormAct(cfg, in_channels + skip_channels, out_channels, kernel)
        self.conv2 = _ConvNormAct(cfg, out_channels, out_channels, kernel)

    def _polyphase_scale(self, x: torch.Tensor, size: Sequence[int]) -> tuple[int, ...] | None:
        """The per-axis upsampling factor when the polyphase path applies, else None."""
        use = self.polyphase
        if use == "auto":
            use = x.device.type == "cpu" and x.shape[0] * math.prod(x.shape[2:]) >= POLYPHASE_MIN_VOXELS
        if not use or _exporting() or torch.compiler.is_compiling() or not polyphase_ready(self.conv1.conv):
            return None  # a compiler gets the plain graph: it cannot trace the in-place phase scatter
        return nearest_scale(x.shape[2:], size)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: Sequence[int]) -> torch.Tensor:
        """Upsample ``x`` to ``size``, concatenate ``skip`` when given, convolve."""
        scale = self._polyphase_scale(x, size)
        if scale is not None:
            layout = _decoder_layout(self.channels_last, x)
            if layout is not None:
                x = x.contiguous(memory_format=layout)
                skip = None if skip is None else skip.contiguous(memory_format=layout)
            c1 = self.conv1
            y = upsample_conv(x, c1.conv.weight, c1.conv.bias, scale=scale, skip=skip)
            return self.conv2(norm_act(c1.norm, c1.act, y))
        x = F.interpolate(x, size=tuple(size), mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        layout = _decoder_layout(self.channels_last, x)
        if layout is not None:
            x = x.contiguous(memory_format=layout)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """U-Net decoder: one :class:`DecoderBlock` per encoder level, plus a last block at input resolution.

    Args:
        feature_info: the encoder's feature info (shallow to deep).
        decoder_channels: output channels per decoder block, deepest first (default:
            :func:`default_decoder_channels`). Needs ``len(feature_info) - 1`` entries, plus one when the
            shallowest feature is below input resolution (the usual case).
        spatial_dims: 1, 2 or 3.
        norm: norm spec.
        act: activation name.
        memory_efficient: memory-efficient SiLU.
        level_kernels: per encoder level, ``None`` or per-axis kernel overrides (``1`` along a coarse axis), as
            built by the encoder (``EfficientNet.level_kernels``); decoder blocks at that level use them, the
            full-resolution block uses level 0's.
        checkpointing: activation checkpointing per decoder block in training.
        channels_last: layout of the blocks' convolutions for 3D inputs (see :class:`DecoderBlock`); the outputs
            keep that layout.
        polyphase: upsampling and first convolution of each block as one polyphase convolution (see
            :class:`DecoderBlock`): ``"auto"`` (CPU), True or False.

    Attributes:
        out_channels: channels of each block's output, deepest first.
        reductions: per-axis reduction of each block's output, deepest first.

    Raises:
        ValueError: wrong number of decoder channels, or ``channels_last``/``polyphase`` not ``"auto"``/True/False.
    """

    def __init__(self, feature_info: FeatureInfo, decoder_channels: Sequence[int] | None = None, *,
                 spatial_dims: int = 2, norm: Any = "batch", act: str = "silu",
                 memory_efficient: bool = False,
                 level_kernels: Sequence[Sequence[int | None] | None] | None = None,
                 checkpointing: bool = False, channels_last: bool | str = "auto",
                 polyphase: bool | str = "auto") -> None:
        super().__init__()
        check_switch("decoder channels_last", channels_last)
        check_switch("decoder polyphase", polyphase)
        self.checkpointing = checkpointing
        enc_ch = feature_info.channels()
        enc_red = feature_info.reduction()
        self.full_resolution = any(r > 1 for r in enc_red[0])
        num_blocks = len(enc_ch) - 1 + int(self.full_resolution)
        if decoder_channels is None:
            decoder_channels = default_decoder_channels(spatial_dims, num_blocks)
        if len(decoder_channels) != num_blocks:
            raise ValueError(f"decoder_channels needs {num_blocks} entries for this encoder (features with "
                             f"channels {enc_ch}: one per skip level, deepest first, plus one at input resolution), "
                             f"got {len(decoder_channels)}: {list(decoder_channels)}.")
        cfg = LayerConfig(spatial_dims, norm, act, memory_efficient)
        skips = list(reversed(enc_ch[:-1])) + ([0] if self.full_resolution else [])
        ones = (1,) * spatial_dims
        self.reductions = list(reversed(enc_red[:-1])) + ([ones] if self.full_resolution else [])
        levels = [s.level for s in reversed(list(feature_info)[:-1])] + ([0] if self.full_resolution else [])
        blocks, cin = [], enc_ch[-1]
        for skip, cout, level in zip(skips, decoder_channels, levels):
            override = level_kernels[level] if level_kernels is not None else None
            kernel = tuple(3 if o is None else int(o) for o in (override or (None,) * spatial_dims))
            blocks.append(DecoderBlock(cfg, cin, skip, int(cout), kernel, channels_last, polyphase))
            cin = int(cout)
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = [int(c) for c in decoder_channels]

    def forward(self, features: list[torch.Tensor], input_size: Sequence[int]) -> list[torch.Tensor]:
        """Decode.

        Args:
            features: encoder features, shallow to deep.
            input_size: spatial size of the (padded) network input, for the last block.

        Returns:
            Every block's output, deepest first (the last is at the finest resolution).
        """
        skips: list[torch.Tensor | None] = list(reversed(features[:-1]))
        sizes = [tuple(s.shape[2:]) for s in features[:-1]][::-1]
        if self.full_resolution:
            skips.append(None)
            sizes.append(tuple(input_size))
        x, outs = features[-1], []
        use_ckpt = self.checkpointing and self.training and torch.is_grad_enabled()
        for block, skip, size in zip(self.blocks, skips, sizes):
            # recompute() leaves the running statistics of the block's batch norms alone in the recomputation
            x = recompute(block, (block,), x, skip, size) if use_ckpt else block(x, skip, size)
            outs.append(x)
        return outs
