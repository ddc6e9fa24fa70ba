"""Nearest-neighbour upsampling followed by a convolution, computed without the upsampled tensor (polyphase).

A U-Net decoder block upsamples its input ``x`` by 2 (nearest) and convolves it, usually after concatenating a
skip feature. After nearest upsampling by ``s`` along an axis, the ``s`` outputs that share an input position
("phases") see only a few distinct input samples: a 3-tap kernel over the upsampled axis reads 2 input samples per
output, with the taps that fall on the same sample summed. So ``conv(upsample(x), w)`` equals, phase by phase, a
smaller convolution of ``x`` itself whose weights are sums of ``w``'s taps, and the phases interleave into the
output. For a 3x3x3 kernel and 2x upsampling that is 8 phases of 2x2x2 kernels on the coarse grid: 8/27 of the
multiply-adds, no upsampled input in memory, and in training no upsampled input kept for backward. The result is
``conv(upsample(x), w)`` up to float rounding (the sums run in another order); padding is zero padding of the
upsampled tensor, as a ``padding=k // 2`` convolution has.

:func:`upsample_conv` is the functional form (with an optional skip feature: the convolution of
``cat([upsample(x), skip])`` splits into a polyphase part over ``x`` and a plain convolution of ``skip``, added in
place); :func:`nearest_scale` tells whether a target size is an integer multiple of an input size; and
:func:`polyphase_ready` whether a convolution module has the form the rewrite needs (stride 1, no dilation or
groups, odd kernels, ``k // 2`` zero padding).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from medeff.ops.dense import Conv3d, conv3d

__all__ = ["PLAIN_CONVS", "AxisPlan", "axis_plan", "nearest_scale", "phase_weight", "polyphase_ready",
           "upsample_conv"]


@dataclass(frozen=True)
class AxisPlan:
    """How one axis of a kernel of size ``kernel`` becomes ``scale`` phase kernels of ``taps`` taps.

    Attributes:
        scale: upsampling factor along the axis.
        kernel: kernel size along the axis (odd).
        taps: phase kernel size.
        pad: zero padding of the coarse input (before, after).
        shifts: per phase, the first coarse-conv output that belongs to that phase.
        mix: ``(scale, taps, kernel)`` 0/1 matrix: phase tap ``j`` of phase ``a`` sums the original taps ``t`` with
            ``mix[a, j, t] == 1``.
    """

    scale: int
    kernel: int
    taps: int
    pad: tuple[int, int]
    shifts: tuple[int, ...]
    mix: tuple[tuple[tuple[int, ...], ...], ...]


@functools.lru_cache(maxsize=64)
def axis_plan(scale: int, kernel: int) -> AxisPlan:
    """The phase decomposition of one axis (see the module docstring); cached, as every forward asks again.

    Output ``o = scale * i + a`` of a ``padding=kernel // 2`` convolution over the upsampled axis reads upsampled
    positions ``o + t - kernel // 2``, i.e. coarse samples ``i + (a + t - kernel // 2) // scale``.
    """
    if scale < 1 or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"polyphase needs a scale >= 1 and an odd kernel, got scale {scale}, kernel {kernel}.")
    half = kernel // 2
    offsets = [[(a + t - half) // scale for t in range(kernel)] for a in range(scale)]
    lows = [min(o) for o in offsets]
    taps = max(max(o) - lo + 1 for o, lo in zip(offsets, lows))
    before = -min(lows)
    mix = [[[int(offsets[a][t] - lows[a] == j) for t in range(kernel)] for j in range(taps)] for a in range(scale)]
    return AxisPlan(scale, kernel, taps, (before, max(lows) + taps - 1), tuple(lo + before for lo in lows),
                    tuple(tuple(tuple(r) for r in m) for m in mix))


def phase_weight(weight: torch.Tensor, plans: Sequence[AxisPlan]) -> torch.Tensor:
    """``weight`` ``(C_out, C_in, *kernel)`` as the coarse convolution's ``(P * C_out, C_in, *taps)``, phase-major.

    Phases are ordered as ``itertools.product`` over the axes (the first axis slowest); the map is linear, so
    gradients flow back to ``weight``.
    """
    dims = len(plans)
    kernel_idx, phase_idx, tap_idx = "xyz"[:dims], "abc"[:dims], "pqr"[:dims]
    terms = ",".join(phase_idx[d] + tap_idx[d] + kernel_idx[d] for d in range(dims))
    equation = f"oi{kernel_idx},{terms}->{phase_idx}oi{tap_idx}"
    mixes = [torch.tensor(p.mix, dtype=weight.dtype, device=weight.device) for p in plans]
    out = torch.einsum(equation, weight, *mixes)
    phases = math.prod(p.scale for p in plans)
    return out.reshape(phases * weight.shape[0], weight.shape[1], *[p.taps for p in plans])


def nearest_scale(in_size: Sequence[int], out_size: Sequence[int]) -> tuple[int, ...] | None:
    """Per-axis integer factors with ``out = factor * in``, or None when some axis is not an integer multiple."""
    if len(in_size) != len(out_size):
        return None
    factors = []
    for i, o in zip(in_size, out_size):
        if i <= 0 or o % i:
            return None
        factors.append(o // i)
    return tuple(factors)


#: the convolution classes whose forward is exactly ``F.conv{1,2,3}d`` of their weight (subclasses that change
#: the forward, e.g. a weight standardisation, are left alone)
PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv3d)


def polyphase_ready(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain zero-padded convolution (:data:`PLAIN_CONVS`) the rewrite reproduces exactly.

    The polyphase path reads the module's weight and bias and does not call it: hooks registered on it do not run.
    """
    if type(conv) not in PLAIN_CONVS or conv.padding_mode != "zeros":
        return False
    kernel = tuple(conv.kernel_size)
    return (conv.groups == 1 and all(s == 1 for s in conv.stride) and all(d == 1 for d in conv.dilation)
            and not isinstance(conv.padding, str) and all(k % 2 == 1 for k in kernel)
            and tuple(conv.padding) == tuple(k // 2 for k in kernel))


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding) -> torch.Tensor:
    if x.dim() == 5:
        return conv3d(x, weight, bias, 1, padding)
    return (F.conv2d if x.dim() == 4 else F.conv1d)(x, weight, bias, 1, padding)


def _layout(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 5 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _phase_pairs(coarse: torch.Tensor, fine: torch.Tensor, cout: int, scale: Sequence[int],
                 shifts: Sequence[Sequence[int]], size: Sequence[int]):
    """(block of ``coarse`` of one phase, strided view of ``fine`` it fills), phase by phase."""
    lead = (slice(None), slice(None))
    for idx, phase in enumerate(itertools.product(*[range(s) for s in scale])):
        block = coarse[:, idx * cout:(idx + 1) * cout]
        block = block[lead + tuple(slice(sh[a], sh[a] + n) for sh, a, n in zip(shifts, phase, size))]
        yield block, fine[lead + tuple(slice(a, None, s) for a, s in zip(phase, scale))]


class _Interleave(torch.autograd.Function):
    """Scatter the phases of the coarse convolution into the fine output (added to ``base`` in place if given)."""

    @staticmethod
    def forward(ctx, coarse, base, cout, scale, shifts, size):  # noqa: D102
        if base is None:
            out = torch.empty(coarse.shape[0], cout, *[s * n for s, n in zip(scale, size)], dtype=coarse.dtype,
                              device=coarse.device, memory_format=_layout(coarse))
            for block, view in _phase_pairs(coarse, out, cout, scale, shifts, size):
                view.copy_(block)
        else:
            ctx.mark_dirty(base)
            out = base
            for block, view in _phase_pairs(coarse, out, cout, scale, shifts, size):
                view.add_(block)
        ctx.meta = (coarse.shape, _layout(coarse), cout, scale, shifts, size, base is not None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: D102
        shape, layout, cout, scale, shifts, size, has_base = ctx.meta
        grad_coarse = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=layout).zero_()
        for block, view in _phase_pairs(grad_coarse, grad, cout, scale, shifts, size):
            block.copy_(view)
        return grad_coarse, (grad if has_base else None), None, None, None, None


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  scale: Sequence[int], skip: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(cat([upsample_nearest(x, scale), skip]), weight, bias, padding=k // 2)`` without the upsampled tensor.

    Args:
        x: ``(B, C_x, *size)`` coarse input.
        weight: ``(C_out, C_x + C_skip, *kernel)``, odd kernel sizes; the first ``C_x`` input channels act on ``x``.
        bias: ``(C_out,)`` or None.
        scale: integer upsampling factor per axis.
        skip: ``(B, C_skip, *(scale * size))`` feature concatenated after the upsampled ``x``, or None.

    Returns:
        ``(B, C_out, *(scale * size))``, in the memory layout of the convolutions' outputs (channels-last for
        channels-last inputs wherever oneDNN runs them).

    Raises:
        ValueError: mismatched channels, sizes or dimensionality, or an even kernel.
    """
    dims = x.dim() - 2
    if dims not in (1, 2, 3) or weight.dim() != x.dim() or len(scale) != dims:
        raise ValueError(f"upsample_conv needs a 1D/2D/3D input, a weight of the same rank and one scale per axis; "
                         f"got input {tuple(x.shape)}, weight {tuple(weight.shape)}, scale {tuple(scale)}.")
    size = tuple(x.shape[2:])
    channels = x.shape[1] + (0 if skip is None else skip.shape[1])
    if weight.shape[1] != channels:
        raise ValueError(f"weight has {weight.shape[1]} input channels, input and skip have {channels}.")
    fine = tuple(int(s) * n for s, n in zip(scale, size))
    if skip is not None and tuple(skip.shape[2:]) != fine:
        raise ValueError(f"skip has size {tuple(skip.shape[2:])}, the upsampled input {fine}.")
    plans = [axis_plan(int(s), int(k)) for s, k in zip(scale, weight.shape[2:])]
    cx, cout = x.shape[1], weight.shape[0]
    base = None
    if skip is not None:
        base = _conv(skip, weight[:, cx:], bias, tuple(k // 2 for k in weight.shape[2:]))
        bias = None
    coarse_weight = phase_weight(weight[:, :cx], plans)
    phases = coarse_weight.shape[0] // cout
    pads: list[int] = []
    for p in reversed(plans):  # F.pad: last axis first
        pads += list(p.pad)
    coarse = _conv(F.pad(x, pads), coarse_weight, None if bias is None else bias.repeat(phases), 0)
    return _Interleave.apply(coarse, base, cout, tuple(int(s) for s in scale), tuple(p.shifts for p in plans),
                             size)
