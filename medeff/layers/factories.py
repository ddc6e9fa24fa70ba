"""Thin, dimension-generic wrappers over MONAI's layer factories (convolution, normalisation, dropout).

``make_conv(spatial_dims=3, ...)`` returns a plain ``torch.nn.Conv3d`` (so parameter names stay
``weight``/``bias`` and 2D state dicts map 1:1); only ``padding="same_tf"`` returns a subclass that pads
dynamically in ``forward`` like TensorFlow's "SAME" (needed only for TF-ported weights).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Dropout
from monai.networks.layers.utils import get_norm_layer
from torch import nn

from medeff.ops.dense import Conv3d as DenseConv3d
from medeff.ops.modules import FastDepthwiseConv3d
from medeff.utils.logging import get_logger
from medeff.utils.options import look_up

_log = get_logger(__name__)

__all__ = ["NORM_DEFAULTS", "PADDING_MODES", "check_spatial_dims", "make_conv", "make_dropout", "make_norm",
           "padding_mode", "to_tuple", "with_padding"]

PADDING_MODES = ("same", "same_tf")

#: Defaults merged under user arguments, per norm name. BatchNorm uses the TF EfficientNet values.
NORM_DEFAULTS: dict[str, dict[str, Any]] = {
    "batch": {"eps": 1e-3, "momentum": 0.1},
    "instance": {"affine": True},
    "group": {"num_groups": 8},
    "layer": {},
}


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 1, 2 or 3.

    Raises:
        ValueError: for any other value.
    """
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
    return int(spatial_dims)


def to_tuple(value: int | Sequence[int], spatial_dims: int, what: str = "value") -> tuple[int, ...]:
    """Broadcast an int (or a one-element sequence) to a per-axis tuple of length ``spatial_dims``.

    Raises:
        ValueError: if a sequence has a length other than 1 or ``spatial_dims``.
    """
    if isinstance(value, int):
        return (value,) * spatial_dims
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        return values * spatial_dims
    if len(values) != spatial_dims:
        raise ValueError(f"{what} {tuple(value)} has {len(values)} axes but spatial_dims={spatial_dims}.")
    return values


class _SameTFMixin:
    """Pads like TF "SAME" at run time (asymmetric for stride 2), then convolves with padding 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        pads: list[int] = []
        for size, k, s, d in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride),
                                 reversed(self.dilation)):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)  # type: ignore[misc]


_SAME_TF_CLASSES: dict[int, type] = {}


def _same_tf_class(spatial_dims: int) -> type:
    if spatial_dims not in _SAME_TF_CLASSES:
        base = Conv[Conv.CONV, spatial_dims]
        _SAME_TF_CLASSES[spatial_dims] = type(f"SameTF{base.__name__}", (_SameTFMixin, base), {})
    return _SAME_TF_CLASSES[spatial_dims]


def make_conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int] = 1,
    stride: int | Sequence[int] = 1,
    *,
    groups: int = 1,
    bias: bool = False,
    padding: str = "same",
    fast_depthwise: bool = False,
) -> nn.Module:
    """Create an N-d convolution with size-independent "same" padding.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: int or per-axis sizes.
        stride: int or per-axis strides.
        groups: convolution groups (``in_channels`` for depthwise).
        bias: add a bias.
        padding: ``"same"`` (symmetric ``k // 2`` per axis, works for any input size) or ``"same_tf"``
            (TF-style dynamic padding, asymmetric for even totals; for TF-ported weights).
        fast_depthwise: for 3D depthwise layers, use :class:`FastDepthwiseConv3d` (same parameters, faster
            CPU training; see :mod:`medeff.ops.depthwise`).

    Returns:
        The convolution module, ``(B, in_channels, *spatial) -> (B, out_channels, *spatial / stride)``.

    Raises:
        ConfigError: unknown padding mode.
    """
    look_up(padding, PADDING_MODES, what="padding mode", key="padding")
    kernel = to_tuple(kernel_size, spatial_dims, "kernel_size")
    strides = to_tuple(stride, spatial_dims, "stride")
    if padding == "same_tf":
        cls = _same_tf_class(spatial_dims)
        return cls(in_channels, out_channels, kernel, strides, padding=0, groups=groups, bias=bias)
    cls = Conv[Conv.CONV, check_spatial_dims(spatial_dims)]
    if fast_depthwise and spatial_dims == 3 and groups == in_channels == out_channels and groups > 1:
        cls = FastDepthwiseConv3d
    elif spatial_dims == 3 and groups == 1:
        cls = DenseConv3d  # nn.Conv3d that keeps batch-1 inputs on oneDNN (medeff.ops.dense)
    return cls(in_channels, out_channels, kernel, strides, padding=tuple(k // 2 for k in kernel), groups=groups,
               bias=bias)


def padding_mode(conv: nn.Module) -> str:
    """``"same_tf"`` for a convolution made with ``padding="same_tf"``, else ``"same"``."""
    return "same_tf" if isinstance(conv, _SameTFMixin) else "same"


def with_padding(conv: nn.Module, padding: str, *, fast_depthwise: bool = False) -> nn.Module:
    """A convolution like ``conv`` (kernel, stride, groups) in another "same" padding mode, sharing its parameters.

    Used to run weights under the padding they were trained with (see
    :func:`medeff.models.conventions.apply_convention`). The parameters are the same ``nn.Parameter`` objects, so
    an optimizer holding them keeps working.

    Args:
        conv: a convolution made by :func:`make_conv`.
        padding: ``"same"`` or ``"same_tf"``.
        fast_depthwise: as in :func:`make_conv`.

    Returns:
        ``conv`` itself when it already pads that way, else the new module (in ``conv``'s train/eval mode).
    """
    look_up(padding, PADDING_MODES, what="padding mode", key="padding")
    if padding_mode(conv) == padding:
        return conv
    with torch.device("meta"):
        new = make_conv(conv.weight.ndim - 2, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                        groups=conv.groups, bias=conv.bias is not None, padding=padding, fast_depthwise=fast_depthwise)
    new.weight = conv.weight
    if conv.bias is not None:
        new.bias = conv.bias
    return new.train(conv.training)


def make_norm(spec: str | tuple[str, dict[str, Any]] | Sequence[Any], spatial_dims: int, channels: int) -> nn.Module:
    """Create a normalisation layer from ``"batch"``/``"instance"``/``"group"``/``"layer"`` or ``(name, kwargs)``.

    Defaults from :data:`NORM_DEFAULTS` are used unless overridden (BatchNorm: eps 1e-3, momentum 0.1: running statistics settle within tens of steps, which short fine-tuning runs on small CT sets need).

    Args:
        spec: norm name, or ``(name, kwargs)`` as in MONAI (YAML friendly: a two-element list).
        spatial_dims: 1, 2 or 3.
        channels: number of channels normalised.

    Returns:
        The normalisation module.

    Raises:
        ConfigError: unknown norm name.
        ValueError: a malformed spec.

    Note:
        Group norm whose ``num_groups`` does not divide ``channels`` uses ``gcd(channels, num_groups)`` groups
        (logged at INFO), so one setting works for every layer width.
    """
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Sequence) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        name, kwargs = spec[0], dict(spec[1])
    else:
        raise ValueError(f"norm must be a name or a (name, kwargs) pair such as ('group', {{'num_groups': 8}}), "
                         f"got {spec!r}.")
    name = name.lower()
    look_up(name, NORM_DEFAULTS, what="norm", key="norm")
    args = {**NORM_DEFAULTS[name], **kwargs}
    if name == "group":
        groups = int(args["num_groups"])
        if channels % groups:
            _log.info("group norm: %d groups do not divide %d channels; using %d groups", groups, channels,
                      math.gcd(channels, groups))
            groups = math.gcd(channels, groups)
        args["num_groups"] = groups
    if name == "layer":
        return nn.GroupNorm(1, channels, **{k: v for k, v in args.items() if k in ("eps", "affine")})
    return get_norm_layer(name=(name, args), spatial_dims=check_spatial_dims(spatial_dims), channels=channels)


def make_dropout(spatial_dims: int, rate: float) -> nn.Module:
    """Element-wise dropout (MONAI's 1D entry, i.e. ``nn.Dropout``, valid for any shape) or Identity at rate 0."""
    check_spatial_dims(spatial_dims)
    if rate <= 0:
        return nn.Identity()
    return Dropout[Dropout.DROPOUT, 1](rate)
