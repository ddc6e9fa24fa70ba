"""Depthwise convolution (2D/3D) with a faster CPU backward.

On CPU, aten's ``convolution_backward`` for depthwise (``groups == channels``) 3D convolutions is the
single largest cost of an EfficientNet 3D train step. This module computes the same gradients with
other, faster kernels:

* ``grad_input`` of a stride-1 layer is the forward depthwise convolution of ``grad_output`` with the
  spatially flipped kernel and padding ``k - 1 - p``, run in channels-last layout (an order of
  magnitude faster than aten's backward kernel).
* ``grad_weight`` of a stride-1 layer uses the "conv trick": the padded input viewed as one sample with
  ``B * C`` channels is convolved (``groups=B*C``) with ``grad_output`` viewed as ``B * C`` kernels,
  giving ``(B, C, *k)`` partial weight gradients that are summed over the batch. Large volumes are
  processed in slabs along the first spatial axis so that each slab stays in cache.
* ``grad_input`` of a strided layer is the stride-1 rule applied to ``grad_output`` spread onto the stride-1
  output grid (zeros between its samples): one channels-last depthwise conv, 3-9x faster than aten's backward.
* ``grad_weight`` of a strided layer is aten's ``convolution_backward`` asked for the weight alone: it is aten's
  input gradient that is slow, not its weight gradient. A channels-last input keeps its layout when oneDNN's scratch
  buffer for it (about 1 KB per weight element: 83 MB for a 672-channel 5x5x5 layer, which once set the peak
  memory of a whole 3D B0 train step) is no larger than the contiguous copy of the input it saves; otherwise the
  input is copied to NC... (see :func:`strided_grad_weight`).

Only the gradients that autograd asks for are computed. On CUDA (or any non-CPU device) the native
convolution is used unchanged. Double backward is not supported (the backward is not differentiable).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "CL_WEIGHT_GRAD_SCRATCH_BYTES",
    "SLAB_MIN_ELEMENTS",
    "SLAB_TARGET_ELEMENTS",
    "DepthwiseConvFunction",
    "depthwise_conv",
    "depthwise_grad_input",
    "depthwise_grad_weight",
    "strided_grad_weight",
    "supports_fast_path",
]

#: ``grad_weight`` is computed in slabs along the first spatial axis when the input has at least this many
#: elements (about 6 MB in float32); smaller inputs fit in cache in one piece.
SLAB_MIN_ELEMENTS = 1_500_000
#: Target number of padded-input elements per slab (about 1 MB in float32).
SLAB_TARGET_ELEMENTS = 262_144
#: Bytes of scratch that oneDNN's channels-last depthwise weight gradient allocates per weight element, whatever
#: the batch, spatial size or threads (torch 2.13 on x86: 1032; 83 MB for a 672-channel 5x5x5 layer).
CL_WEIGHT_GRAD_SCRATCH_BYTES = 1032

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _channels_last(spatial_dims: int) -> torch.memory_format:
    if spatial_dims == 3:
        return torch.channels_last_3d
    if spatial_dims == 2:
        return torch.channels_last
    return torch.contiguous_format


def _as_tuple(value: int | Sequence[int], spatial_dims: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * spatial_dims
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        values = values * spatial_dims
    if len(values) != spatial_dims:
        raise ValueError(f"depthwise_conv: {what} {tuple(value)} has {len(values)} axes; the input has {spatial_dims}.")
    return values


def supports_fast_path(kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> bool:
    """Whether the custom backward applies to a layer with these settings (else plain autograd is used).

    The custom path needs ``0 <= padding <= kernel - 1`` per axis (so the flipped-kernel convolution has
    non-negative padding) and a positive stride.

    Args:
        kernel_size: kernel size per spatial axis.
        stride: stride per spatial axis.
        padding: symmetric zero padding per spatial axis.

    Returns:
        True when :class:`DepthwiseConvFunction` can be used.
    """
    return all(s >= 1 and 0 <= p <= k - 1 for k, s, p in zip(kernel_size, stride, padding))


def depthwise_grad_input(
    grad_output: torch.Tensor,
    weight: torch.Tensor,
    padding: Sequence[int],
    stride: Sequence[int] | None = None,
    input_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """``grad_input`` of a depthwise convolution: a stride-1 depthwise conv of ``grad_output`` with the flipped kernel.

    A strided layer's ``grad_output`` is first spread onto the stride-1 output grid (``grad_output[o]`` at position
    ``o * stride``, zeros between), which turns its input gradient into the stride-1 one.

    Args:
        grad_output: ``(B, C, *out_spatial)``.
        weight: ``(C, 1, *k)``.
        padding: the forward padding per axis (each ``<= k - 1``).
        stride: the forward stride per axis; None for stride 1.
        input_size: the forward input's spatial size; needed when any stride is above 1.

    Returns:
        ``(B, C, *in_spatial)`` in channels-last layout (2D/3D).
    """
    n = grad_output.dim() - 2
    kernel = weight.shape[2:]
    if stride is not None and any(s != 1 for s in stride):
        if input_size is None:
            raise ValueError("depthwise_grad_input: a strided layer needs input_size (the forward input's spatial size).")
        grid = [size + 2 * p - k + 1 for size, p, k in zip(input_size, padding, kernel)]
        spread = grad_output.new_zeros(grad_output.shape[0], *grid, grad_output.shape[1]).movedim(-1, 1)
        spread[(slice(None), slice(None), *(slice(None, None, s) for s in stride))] = grad_output
        grad_output = spread  # channels-last already (2D/3D): the conv below needs no copy
    flipped = weight.flip(tuple(range(2, 2 + n)))
    back_pad = tuple(k - 1 - p for k, p in zip(kernel, padding))
    grad_output = grad_output.contiguous(memory_format=_channels_last(n))
    return _CONV[n](grad_output, flipped, None, 1, back_pad, 1, weight.shape[0])


def _grad_weight_whole(x_pad: torch.Tensor, grad_output: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Sum over the batch of the per-sample weight gradients, via one grouped conv (returns ``(B, C, *k)``)."""
    b, c = grad_output.shape[:2]
    n = grad_output.dim() - 2
    x_view = x_pad.reshape(1, b * c, *x_pad.shape[2:])
    g_view = grad_output.reshape(b * c, 1, *grad_output.shape[2:])
    out = _CONV[n](x_view, g_view, None, 1, 0, 1, b * c)
    return out.reshape(b, c, *kernel)


def _pad(x: torch.Tensor, padding: Sequence[int], first: int, last: int) -> torch.Tensor:
    """Rows ``first:last`` (first spatial axis, may reach into the zero padding) of the zero-padded ``x``, contiguous.

    Only the requested slab is copied, so slab-wise callers never hold a padded copy of the whole input.
    """
    size = x.shape[2]
    lo, hi = max(first, 0), min(last, size)
    pads: list[int] = []
    for p in reversed(padding[1:]):
        pads += [p, p]
    pads += [lo - first, last - hi]
    part = x[:, :, lo:hi]
    return F.pad(part, pads).contiguous() if any(pads) else part.contiguous()


def depthwise_grad_weight(
    x: torch.Tensor, grad_output: torch.Tensor, kernel_size: Sequence[int], padding: Sequence[int]
) -> torch.Tensor:
    """``grad_weight`` of a stride-1 depthwise convolution by the grouped-conv trick.

    Inputs with at least :data:`SLAB_MIN_ELEMENTS` elements are processed in slabs along the first
    spatial axis (each slab with a ``k - 1`` halo, padded on its own), which keeps the working set in cache and
    never makes a padded copy of the whole input.

    Args:
        x: forward input ``(B, C, *in_spatial)`` (any layout).
        grad_output: ``(B, C, *out_spatial)`` (any layout).
        kernel_size: kernel size per axis.
        padding: the forward padding per axis.

    Returns:
        ``(C, 1, *kernel_size)``, contiguous.
    """
    grad_output = grad_output.contiguous()
    out_first = grad_output.shape[2]
    if x.numel() < SLAB_MIN_ELEMENTS or out_first < 2:
        total = _grad_weight_whole(_pad(x, padding, -padding[0], x.shape[2] + padding[0]), grad_output, kernel_size)
    else:
        b, c = x.shape[:2]
        plane = b * c * x[0, 0, 0].numel()  # elements of one input slice along the first axis
        step = max(1, min(out_first, SLAB_TARGET_ELEMENTS // max(plane, 1)))
        halo = kernel_size[0] - 1
        total = None
        for start in range(0, out_first, step):
            stop = min(out_first, start + step)
            # padded rows start..stop+halo are input rows start-p..stop+halo-p: pad only this slab
            part = _grad_weight_whole(
                _pad(x, padding, start - padding[0], stop + halo - padding[0]), grad_output[:, :, start:stop],
                kernel_size,
            )
            total = part if total is None else total.add_(part)
    return total.sum(0).unsqueeze(1).contiguous()


def _aten_grad_weight(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    memory_format: torch.memory_format,
) -> torch.Tensor:
    """aten's ``convolution_backward`` asked for the weight gradient alone, its inputs in ``memory_format``."""
    n = x.dim() - 2
    return torch.ops.aten.convolution_backward(
        grad_output.contiguous(memory_format=memory_format), x.contiguous(memory_format=memory_format), weight,
        None, list(stride), list(padding), [1] * n, False, [0] * n, weight.shape[0], [False, True, False],
    )[1]


def strided_grad_weight(
    grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int], padding: Sequence[int]
) -> torch.Tensor:
    """``grad_weight`` of a strided depthwise convolution: aten's, asked for the weight gradient alone.

    It runs channels-last when ``x`` is channels-last and oneDNN's scratch buffer for it
    (:data:`CL_WEIGHT_GRAD_SCRATCH_BYTES` per weight element) is no larger than the contiguous copy of ``x`` it
    saves; otherwise in contiguous layout (a channels-last ``x`` is copied).
    """
    n = x.dim() - 2
    fmt = _channels_last(n)
    x_is_cl = n > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=fmt)
    scratch_fits = weight.numel() * CL_WEIGHT_GRAD_SCRATCH_BYTES <= x.numel() * x.element_size()
    layout = fmt if x_is_cl and scratch_fits else torch.contiguous_format
    return _aten_grad_weight(grad_output, x, weight, stride, padding, layout)


class DepthwiseConvFunction(torch.autograd.Function):
    """Depthwise convolution whose CPU backward avoids aten's slow depthwise ``convolution_backward``.

    ``apply(x, weight, bias, stride, padding)`` with ``x`` ``(B, C, *spatial)``, ``weight`` ``(C, 1, *k)``,
    ``bias`` ``(C,)`` or None, ``stride`` and ``padding`` per-axis tuples. The output has the memory
    format of ``x`` (channels-last input gives channels-last output). Once differentiable.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):  # noqa: D102
        n = x.dim() - 2
        fmt = _channels_last(n)
        x_is_cl = n > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=fmt)
        strided = any(s != 1 for s in stride)
        x_run = x if strided else x.contiguous(memory_format=fmt)
        out = _CONV[n](x_run, weight, bias, stride, padding, 1, weight.shape[0])
        out = out.contiguous(memory_format=fmt if x_is_cl else torch.contiguous_format)
        ctx.stride, ctx.padding = tuple(stride), tuple(padding)
        ctx.input_size = tuple(x.shape[2:])
        ctx.input_format = fmt if x_is_cl else torch.contiguous_format
        ctx.has_bias = bias is not None
        # only the weight gradient reads x (the grouped-conv trick, or aten's strided weight gradient)
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # noqa: D102
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        kernel = tuple(weight.shape[2:])
        if any(s != 1 for s in ctx.stride):
            if need_x:  # in the input's layout: a channels-last gradient of an NC... input slowed the block's backward
                grad_x = depthwise_grad_input(grad_output, weight, ctx.padding, ctx.stride, ctx.input_size)
                grad_x = grad_x.contiguous(memory_format=ctx.input_format)
            if need_w:
                grad_w = strided_grad_weight(grad_output, x, weight, ctx.stride, ctx.padding)
        else:
            if need_x:
                grad_x = depthwise_grad_input(grad_output, weight, ctx.padding)
            if need_w:
                grad_w = depthwise_grad_weight(x, grad_output, kernel, ctx.padding)
        if need_b and ctx.has_bias:
            grad_b = grad_output.sum(dim=[0, *range(2, grad_output.dim())])
        return grad_x, grad_w, grad_b, None, None


def depthwise_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Depthwise convolution (``groups == channels``), numerically the same as ``F.conv{2,3}d(..., groups=C)``.

    On CPU, when a gradient is needed, the custom backward of :class:`DepthwiseConvFunction` is used;
    otherwise (no grad, CUDA and other devices, unsupported padding) the native convolution runs.

    Args:
        x: input ``(B, C, *spatial)`` with 1-3 spatial axes.
        weight: ``(C, 1, *kernel_size)``.
        bias: ``(C,)`` or None.
        stride: per-axis stride or one int.
        padding: per-axis symmetric zero padding or one int; None means ``kernel_size // 2``.

    Returns:
        ``(B, C, *out_spatial)``.

    Raises:
        ValueError: if ``weight`` is not a depthwise kernel for ``x``.
    """
    n = x.dim() - 2
    if n not in (1, 2, 3) or weight.dim() != n + 2 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"depthwise_conv: expected x (B, C, *spatial) with 1-3 spatial axes and weight (C, 1, *k) with the same C; "
            f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}."
        )
    kernel = tuple(weight.shape[2:])
    stride_t = _as_tuple(stride, n, "stride")
    padding_t = tuple(k // 2 for k in kernel) if padding is None else _as_tuple(padding, n, "padding")
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if x.device.type == "cpu" and needs_grad and n > 1 and supports_fast_path(kernel, stride_t, padding_t):
        return DepthwiseConvFunction.apply(x, weight, bias, stride_t, padding_t)
    return _CONV[n](x, weight, bias, stride_t, padding_t, 1, weight.shape[0])
