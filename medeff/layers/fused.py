"""Fused batch norm + SiLU for training: keeps one tensor for backward instead of two.

``silu(batch_norm(x))`` in training mode normally keeps both ``x`` (for the norm's backward) and the norm's output
(for SiLU's backward). :class:`BatchNormSiLUFunction` keeps only ``x`` and the per-channel batch statistics and
recomputes the normalised tensor in backward (one element-wise pass), and writes the activation in place of the
norm's output in forward (one buffer less). Outputs, gradients and running-statistics updates are those of
``nn.BatchNorm*`` followed by ``nn.SiLU``.

:func:`norm_act` is what the blocks call: it takes the fused path when ``norm`` is a plain training-mode
``BatchNorm{1,2,3}d`` with running statistics and affine parameters, ``act`` a SiLU, on CPU with gradients
enabled and an input of the parameters' dtype (not under mixed precision), and otherwise runs ``act(norm(x))``
unchanged. The fused path does not call the norm module, so its forward hooks do not run there: code that hooks
batch norms (``medeff.engine.norm_check``) opens :func:`unfused` around the forward it watches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from medeff.layers.activations import MemoryEfficientSiLU

__all__ = ["BatchNormSiLUFunction", "can_fuse", "norm_act", "unfused"]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SILUS = (nn.SiLU, MemoryEfficientSiLU)
_unfused_depth = 0


@contextmanager
def unfused() -> Iterator[None]:
    """Inside, :func:`norm_act` runs ``act(norm(x))``: the norm modules are called and their hooks run (same
    outputs and gradients up to float rounding, one more tensor kept for backward per norm)."""
    global _unfused_depth
    _unfused_depth += 1
    try:
        yield
    finally:
        _unfused_depth -= 1


def _channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


class BatchNormSiLUFunction(torch.autograd.Function):
    """``silu(batch_norm(x, training=True))`` that saves ``x`` and the batch statistics only (once differentiable).

    ``apply(x, weight, bias, running_mean, running_var, momentum, eps)``: the running statistics are updated in
    place with ``momentum`` (as ``F.batch_norm`` does); ``momentum`` 0 leaves them unchanged.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):  # noqa: D102
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        torch.nn.functional.silu(y, inplace=True)
        ctx.eps = eps
        ctx.save_for_backward(x, weight, bias, running_mean, running_var, mean, invstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: D102
        x, weight, bias, running_mean, running_var, mean, invstd = ctx.saved_tensors
        scale = invstd * weight
        shift = bias - mean * scale
        z = torch.addcmul(_channel_view(shift, x.dim()), x, _channel_view(scale, x.dim()))  # the norm's output again
        grad_z = torch.ops.aten.silu_backward.grad_input(grad_out, z, grad_input=z)  # element-wise, in place of z
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_z, x, weight, running_mean, running_var, mean, invstd, True, ctx.eps, [need_x, need_w, need_b])
        return grad_x, grad_w, grad_b, None, None, None, None


def can_fuse(norm: nn.Module, act: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`norm_act` takes the fused path for this norm, activation and input."""
    return (
        not _unfused_depth
        and type(norm) in _BATCH_NORMS
        and type(act) in _SILUS
        and norm.training
        and norm.track_running_stats
        and norm.affine
        and norm.running_mean is not None
        and x.device.type == "cpu"
        and x.dtype == norm.weight.dtype  # mixed precision (autocast) takes the unfused path
        and torch.is_grad_enabled()
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
    )


def norm_act(norm: nn.Module, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(norm(x))``, through :class:`BatchNormSiLUFunction` when :func:`can_fuse` allows.

    Args:
        norm: the normalisation module (its parameters and buffers are used; ``num_batches_tracked`` is
            incremented and ``momentum=None`` means a cumulative average, as in ``nn.BatchNorm``).
        act: the activation module.
        x: ``(B, C, *spatial)``.

    Returns:
        The activated, normalised tensor.
    """
    if not can_fuse(norm, act, x):
        return act(norm(x))
    norm.num_batches_tracked.add_(1)
    momentum = norm.momentum
    if momentum is None:  # cumulative moving average, as nn.BatchNorm
        momentum = 1.0 / float(norm.num_batches_tracked)
    return BatchNormSiLUFunction.apply(x, norm.weight, norm.bias, norm.running_mean, norm.running_var,
                                       float(momentum), float(norm.eps))
