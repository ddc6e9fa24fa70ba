"""3D convolutions with batch 1 kept on oneDNN: a size rule in aten's CPU dispatch, side-stepped with zero channels.

aten sends a CPU float convolution to oneDNN only when one of several size tests passes. For a dense (``groups=1``)
3D convolution with batch 1 whose kernel is not larger than 3 on both of its last two axes, the deciding test is
``channels * D * H > 20480`` (a rule written for 2D ``N*C*H*W`` that never looks at the third spatial axis).
Below it the layer runs aten's reference kernel, forward and backward: a ``32 -> 32`` 3x3x3 convolution at 24^3 took
118 ms forward + backward there against 12 ms per sample at batch 2 (docs/benchmarks.md).

:func:`conv3d` appends zero input channels (and zero weight rows) until the test passes. The extra channels add
zeros to every sum, so outputs and gradients are those of ``F.conv3d`` up to float32 rounding (oneDNN sums in
another order than the reference kernel). The padding is taken only where the layer would otherwise fall under the
rule and the extra channels are at most :data:`MAX_EXTRA_FRACTION` times the real ones (a few more FLOPs for a
2-10x faster kernel). CUDA, other dtypes, batches above 1 and grouped or 1x1
layers run ``F.conv3d`` unchanged. :class:`Conv3d` is the ``nn.Conv3d`` subclass medeff's models build for their
dense 3D layers.

A second CPU repair, for bfloat16: under CPU bfloat16 autocast (or with bfloat16 tensors), oneDNN's 3D convolution
backward sometimes returns non-finite weight gradients when an input axis is shorter than the kernel (a 432 -> 128
3x3x3 layer at 2^3, the deepest decoder level of a U-Net on 32^3 patches: 5 of 200 backward passes, at random;
4^3 and larger never did in 150). :func:`conv3d` runs such a layer in float32 and returns bfloat16, as autocast
would have; it is a few thousand voxels, so the cost is nil.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MAX_EXTRA_FRACTION", "ONEDNN_MIN_ELEMENTS", "Conv3d", "bf16_needs_float32", "conv3d", "extra_channels"]

#: aten's threshold on ``batch * channels * D * H`` (the first four sizes) below which such a layer leaves oneDNN.
ONEDNN_MIN_ELEMENTS = 20480
#: the most zero channels added, as a fraction of the real input channels (measured: +1.2x on a 64-channel
#: 12^3 layer still ran 1.5x faster; +8x on a 16-channel one was slower).
MAX_EXTRA_FRACTION = 2.0


def extra_channels(x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> int:
    """Zero input channels :func:`conv3d` appends for this input and weight (0: run ``F.conv3d`` as is)."""
    if (x.dim() != 5 or x.shape[0] != 1 or groups != 1 or x.device.type != "cpu" or x.dtype != torch.float32
            or weight.dtype != torch.float32 or (weight.shape[-1] > 3 and weight.shape[-2] > 3)
            or max(weight.shape[2:]) == 1):
        return 0
    channels, plane = x.shape[1], x.shape[2] * x.shape[3]
    if channels * plane > ONEDNN_MIN_ELEMENTS:
        return 0
    extra = ONEDNN_MIN_ELEMENTS // plane + 1 - channels
    return extra if extra <= MAX_EXTRA_FRACTION * channels else 0


def bf16_needs_float32(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`conv3d` runs this layer in float32: CPU, bfloat16 (tensors or autocast), gradients enabled and
    an input axis shorter than the kernel along it (module doc)."""
    if x.dim() != 5 or x.device.type != "cpu" or not torch.is_grad_enabled():
        return False
    bf16 = x.dtype == torch.bfloat16 or weight.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    return bf16 and any(s < k for s, k in zip(x.shape[2:], weight.shape[2:]))


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    """``F.conv3d`` (same result up to rounding) on oneDNN where aten's batch-1 size rule would not, and in float32
    where oneDNN's bfloat16 backward is unreliable (module doc)."""
    if bf16_needs_float32(x, weight):
        with torch.autocast("cpu", enabled=False):
            out = F.conv3d(x.float(), weight.float(), None if bias is None else bias.float(), stride, padding,
                           dilation, groups)
        return out.to(torch.bfloat16)
    extra = 0 if isinstance(padding, str) else extra_channels(x, weight, groups)
    if extra:
        x = torch.cat([x, x.new_zeros(1, extra, *x.shape[2:])], dim=1)
        weight = torch.cat([weight, weight.new_zeros(weight.shape[0], extra, *weight.shape[2:])], dim=1)
    return F.conv3d(x, weight, bias, stride, padding, dilation, groups)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same constructor, parameters and state dict) whose forward is :func:`conv3d`."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros" or torch.jit.is_scripting():
            return super()._conv_forward(x, weight, bias)
        return conv3d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
