"""Activations: SiLU/Swish (with a memory-efficient variant whose autograd saves only the input), ReLU6
(EfficientNet-Lite)."""

from __future__ import annotations

import torch
from torch import nn

from medeff.utils.options import look_up

__all__ = ["ACTIVATIONS", "MemoryEfficientSiLU", "SiLUFunction", "make_act"]


class SiLUFunction(torch.autograd.Function):
    """``x * sigmoid(x)`` whose backward recomputes the sigmoid from the saved input (one tensor kept)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad_output * (s * (1 + x * (1 - s)))


class MemoryEfficientSiLU(nn.Module):
    """SiLU through :class:`SiLUFunction`; numerically equal to ``nn.SiLU``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return SiLUFunction.apply(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "gelu": nn.GELU,
    "memory_efficient_silu": MemoryEfficientSiLU,
}


def make_act(name: str = "silu", *, memory_efficient: bool = False, inplace: bool = False) -> nn.Module:
    """Create an activation module by name.

    Args:
        name: ``silu`` (= ``swish``), ``relu``, ``relu6``, ``gelu`` or ``memory_efficient_silu``.
        memory_efficient: use :class:`MemoryEfficientSiLU` for ``silu``/``swish``.
        inplace: in-place variant where torch offers one (ReLU/SiLU).

    Returns:
        The activation module.

    Raises:
        ConfigError: unknown activation name.
    """
    cls = look_up(name.lower(), ACTIVATIONS, what="activation", key="act")
    if memory_efficient and cls is nn.SiLU:
        cls = MemoryEfficientSiLU
    if inplace and cls in (nn.SiLU, nn.ReLU, nn.ReLU6):
        return cls(inplace=True)
    return cls()
