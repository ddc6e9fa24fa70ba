"""``DepthwiseConv`` module and ``convert_depthwise``: swap the fast depthwise op into any model.

:class:`FastDepthwiseConv3d` is the same op as an ``nn.Conv3d`` subclass: medeff's models build it directly
(``fast_depthwise=True``), so their modules stay ``nn.Conv3d`` for code that checks the type.

``DepthwiseConv`` holds the same parameters as ``nn.Conv{2,3}d(C, C, k, stride, padding, groups=C)``
(``weight`` of shape ``(C, 1, *k)`` and an optional ``bias`` of shape ``(C,)``), so state dicts load in
either direction. ``convert_depthwise(model)`` replaces every plain depthwise ``nn.Conv2d``/``nn.Conv3d``
in a model by a ``DepthwiseConv`` that shares the original ``Parameter`` objects (an optimizer built
before the conversion keeps working).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medeff.ops.depthwise import _CONV, _as_tuple, depthwise_conv, supports_fast_path
from medeff.utils.logging import get_logger

__all__ = ["DepthwiseConv", "FastDepthwiseConv3d", "convert_depthwise", "is_convertible"]

_log = get_logger(__name__)


class DepthwiseConv(nn.Module):
    """Depthwise convolution (``groups == channels``) with a fast CPU backward.

    On CPU, when gradients are needed, the forward and backward run through
    :class:`medeff.ops.depthwise.DepthwiseConvFunction`; otherwise (no grad, CUDA) the native
    convolution runs. Outputs and gradients equal the native op's within float rounding.

    Args:
        channels: number of input (= output) channels ``C``.
        kernel_size: int or per-axis sizes.
        stride: int or per-axis strides.
        padding: int or per-axis symmetric zero padding; None means ``kernel_size // 2``.
        bias: whether to learn a bias.
        spatial_dims: 2 or 3.

    Example::

        >>> conv = DepthwiseConv(8, (1, 3, 3), stride=(1, 2, 2), spatial_dims=3)
        >>> conv(torch.randn(2, 8, 5, 16, 16)).shape
        torch.Size([2, 8, 5, 8, 8])
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | None = None,
        bias: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"DepthwiseConv: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        self.channels = int(channels)
        self.spatial_dims = spatial_dims
        self.kernel_size = _as_tuple(kernel_size, spatial_dims, "kernel_size")
        self.stride = _as_tuple(stride, spatial_dims, "stride")
        self.padding = (
            tuple(k // 2 for k in self.kernel_size) if padding is None else _as_tuple(padding, spatial_dims, "padding")
        )
        if not supports_fast_path(self.kernel_size, self.stride, self.padding):
            raise ValueError(
                f"DepthwiseConv: padding {self.padding} must lie in [0, kernel_size - 1] per axis for kernel "
                f"{self.kernel_size} and strides must be >= 1 (got {self.stride}); use nn.Conv{spatial_dims}d instead."
            )
        ref = _CONV_MODULES[spatial_dims](
            channels, channels, self.kernel_size, self.stride, self.padding, groups=channels, bias=bias
        )
        self.weight = ref.weight
        self.bias = ref.bias

    @classmethod
    def from_conv(cls, conv: nn.Conv2d | nn.Conv3d) -> DepthwiseConv:
        """Build a ``DepthwiseConv`` that shares ``conv``'s parameters (no copy).

        Args:
            conv: a depthwise ``nn.Conv2d``/``nn.Conv3d`` accepted by :func:`is_convertible`.

        Returns:
            The new module, in ``conv``'s training mode.

        Raises:
            ValueError: if ``conv`` is not convertible.
        """
        if not is_convertible(conv):
            raise ValueError(
                f"DepthwiseConv.from_conv: {conv!r} is not a plain depthwise conv with supported settings; "
                "see medeff.ops.is_convertible."
            )
        spatial_dims = conv.weight.dim() - 2
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.channels = conv.in_channels
        module.spatial_dims = spatial_dims
        module.kernel_size = tuple(conv.kernel_size)
        module.stride = tuple(conv.stride)
        module.padding = _numeric_padding(conv)
        module.weight = conv.weight
        module.bias = conv.bias
        module.train(conv.training)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` ``(B, C, *spatial)``; returns ``(B, C, *out_spatial)``."""
        if not _fast_path_dtype(x, self.weight) or not (self.training or torch.is_grad_enabled()):
            return _CONV[self.spatial_dims](x, self.weight, self.bias, self.stride, self.padding, 1, self.channels)
        return depthwise_conv(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"bias={self.bias is not None}, spatial_dims={self.spatial_dims}"
        )


_CONV_MODULES = {2: nn.Conv2d, 3: nn.Conv3d}


def _fast_path_dtype(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The custom backward runs on CPU, outside autocast, with input and weight of one dtype (mixed precision and
    other devices take the native convolution, whose backward autocast and CUDA handle)."""
    return x.device.type == "cpu" and x.dtype == weight.dtype and not torch.is_autocast_enabled("cpu")


def _numeric_padding(conv: nn.Conv2d | nn.Conv3d) -> tuple[int, ...] | None:
    """Per-axis symmetric padding of ``conv``, or None when it cannot be written as one."""
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * len(conv.kernel_size)
        if padding == "same" and all(k % 2 == 1 for k in conv.kernel_size) and all(s == 1 for s in conv.stride):
            return tuple(k // 2 for k in conv.kernel_size)
        return None
    return tuple(int(p) for p in padding)


def is_convertible(module: nn.Module) -> bool:
    """Whether ``module`` is a plain depthwise ``nn.Conv2d``/``nn.Conv3d`` that :class:`DepthwiseConv` can replace.

    Subclasses (which may override ``forward``), dilated or transposed convolutions, non-zero padding
    modes and channel multipliers other than 1 are left alone.

    Args:
        module: any module.

    Returns:
        True if it can be converted.
    """
    if type(module) not in (nn.Conv2d, nn.Conv3d):
        return False
    conv: nn.Conv2d | nn.Conv3d = module  # type: ignore[assignment]
    if not (conv.groups == conv.in_channels == conv.out_channels) or conv.padding_mode != "zeros":
        return False
    if any(d != 1 for d in conv.dilation):
        return False
    padding = _numeric_padding(conv)
    return padding is not None and supports_fast_path(conv.kernel_size, conv.stride, padding)


def convert_depthwise(module: nn.Module) -> nn.Module:
    """Replace every convertible depthwise conv in ``module`` (in place) by a :class:`DepthwiseConv`.

    Parameters are shared, not copied, so weights, optimizers and state-dict keys are unchanged.

    Args:
        module: any model (or a single depthwise conv).

    Returns:
        ``module`` itself, or the replacement when ``module`` is itself a depthwise conv.
    """
    if is_convertible(module):
        return DepthwiseConv.from_conv(module)  # type: ignore[arg-type]
    count = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if is_convertible(child):
                setattr(parent, name, DepthwiseConv.from_conv(child))  # type: ignore[arg-type]
                count += 1
    _log.debug("convert_depthwise: replaced %d depthwise convolution(s) in %s", count, type(module).__name__)
    return module


class FastDepthwiseConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose depthwise layers train through :func:`medeff.ops.depthwise_conv` on CPU.

    Same constructor, parameters and state dict as ``nn.Conv3d``. The fast path is taken for a depthwise layer
    (``groups == in == out channels``) with dilation 1, zero padding mode and numeric padding in ``[0, k-1]``,
    on CPU with gradients enabled; anything else (inference, CUDA, other settings) runs ``nn.Conv3d.forward``.
    """

    def _eligible(self) -> bool:
        if not (self.groups == self.in_channels == self.out_channels) or self.padding_mode != "zeros":
            return False
        if any(d != 1 for d in self.dilation):
            return False
        padding = _numeric_padding(self)
        return padding is not None and supports_fast_path(self.kernel_size, self.stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if (_fast_path_dtype(x, self.weight) and torch.is_grad_enabled() and not torch.jit.is_scripting()
                and self._eligible()):
            return depthwise_conv(x, self.weight, self.bias, self.stride, _numeric_padding(self))
        return super().forward(x)
