"""EfficientNet blocks, dimension-generic: squeeze-excitation, depthwise-separable, MBConv, Fused-MBConv.

Parameter names follow timm's EfficientNet (``conv_pw``, ``bn1``, ``conv_dw``, ``se.conv_reduce``, ...) so
that 2D state dicts map 1:1. Normalisation and activation are separate modules (``bnN``, ``actN``); the
activations hold no parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from medeff.layers import DropPath, make_act, make_conv, make_norm, norm_act
from medeff.layers.kinds import BATCH_NORMS
from medeff.models.scaling import make_divisible

__all__ = [
    "BLOCKS",
    "ConvNormAct",
    "DepthwiseSeparable",
    "FusedMBConv",
    "LayerConfig",
    "MBConv",
    "SqueezeExcite",
    "check_recompute",
    "check_switch",
    "frozen_norm_stats",
    "recompute",
    "recompute_active",
]


@dataclass(frozen=True)
class LayerConfig:
    """Layer choices shared by every block of a model.

    Attributes:
        spatial_dims: 1, 2 or 3.
        norm: norm spec for :func:`medeff.layers.make_norm`.
        act: activation name for :func:`medeff.layers.make_act`.
        memory_efficient: use the memory-efficient SiLU.
        padding: ``"same"`` or ``"same_tf"``.
        fast_depthwise: 3D depthwise convs use :class:`medeff.ops.FastDepthwiseConv3d` (faster CPU backward).
        recompute: MBConv blocks recompute their expansion (1x1 conv, norm, act) in backward instead of keeping
            two hidden-width tensors for it (see :func:`recompute`); same outputs and gradients, about a third
            less memory saved for backward in a 3D B0. ``"auto"``: only for inputs on the CPU (on a GPU the
            recomputation's extra kernel launches cost more time than the memory is worth; see
            :func:`recompute_active`).
    """

    spatial_dims: int = 2
    norm: Any = "batch"
    act: str = "silu"
    memory_efficient: bool = False
    padding: str = "same"
    fast_depthwise: bool = True
    recompute: bool | str = False

    def conv(self, cin: int, cout: int, kernel: int | Sequence[int] = 1, stride: int | Sequence[int] = 1,
             groups: int = 1, bias: bool = False) -> nn.Module:
        """Convolution in this config's dimensionality and padding."""
        return make_conv(self.spatial_dims, cin, cout, kernel, stride, groups=groups, bias=bias, padding=self.padding,
                         fast_depthwise=self.fast_depthwise)

    def bn(self, channels: int) -> nn.Module:
        """Normalisation layer."""
        return make_norm(self.norm, self.spatial_dims, channels)

    def make_act(self) -> nn.Module:
        """Activation layer."""
        return make_act(self.act, memory_efficient=self.memory_efficient)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global average, 1x1 reduce, act, 1x1 expand, sigmoid gate.

    The two 1x1 layers are convolutions (the parameter layout of every EfficientNet checkpoint). In 3D they run as
    matrix products on the pooled ``(B, C)`` vector, with the same weights viewed as ``(out, in)``: the same
    arithmetic without a convolution primitive's fixed cost, which on CPU is most of the time of a 1x1x1 input
    (the 3D B0 train step is 6-8% faster; in 2D the convolutions measured 3% faster, so 2D keeps them).

    Args:
        cfg: layer config.
        channels: channels gated (the block's hidden channels).
        reduced: channels of the bottleneck.
    """

    def __init__(self, cfg: LayerConfig, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = cfg.conv(channels, reduced, 1, bias=True)
        self.act1 = cfg.make_act()
        self.conv_expand = cfg.conv(reduced, channels, 1, bias=True)
        self.gate = nn.Sigmoid()
        self._dims = tuple(range(2, 2 + cfg.spatial_dims))
        self._as_linear = cfg.spatial_dims == 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not self._as_linear:
            s = x.mean(self._dims, keepdim=True)
            return x * self.gate(self.conv_expand(self.act1(self.conv_reduce(s))))
        reduce, expand = self.conv_reduce, self.conv_expand
        s = F.linear(x.mean(self._dims), reduce.weight.flatten(1), reduce.bias)
        s = F.linear(self.act1(s), expand.weight.flatten(1), expand.bias)
        return x * self.gate(s).view(*s.shape, *(1,) * len(self._dims))


@contextmanager
def frozen_norm_stats(modules: Sequence[nn.Module]):
    """Make the batch norms among ``modules`` leave their running statistics untouched while the context is open.

    A recomputed forward (activation checkpointing) must not update the running mean/variance a second time:
    the momentum is set to 0 (the update becomes an exact no-op) and ``num_batches_tracked`` is restored.
    Batch statistics, outputs and gradients are unaffected.
    """
    norms = [m for mod in modules for m in mod.modules()
             if isinstance(m, BATCH_NORMS) and m.track_running_stats and m.training]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    try:
        for m in norms:
            m.momentum = 0.0
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def check_switch(name: str, value: Any) -> bool | str:
    """``value`` if it is ``"auto"``, True or False (the three-way model options), else a ValueError naming it."""
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError(f"{name} must be 'auto', True or False, got {value!r}.")


def check_recompute(mode: Any) -> bool | str:
    """The ``recompute`` option checked: ``True``, ``False`` or ``"auto"`` (``None`` is read as ``"auto"``)."""
    return "auto" if mode is None else check_switch("recompute", mode)


def recompute_active(mode: bool | str, x: torch.Tensor) -> bool:
    """Whether a block built with ``recompute=mode`` recomputes its expansion for the input ``x`` (in training).

    ``True``: always; ``"auto"``: for CPU inputs only. A CUDA train step of a 3D B0 is bound by kernel launches
    at the sizes medeff trains at, and the recomputation adds launches (docs/benchmarks.md, "GPU check").
    Never while ``torch.compile`` traces the model: the compiler chooses what to keep for backward itself.
    """
    if mode is False or torch.compiler.is_compiling():
        return False
    return mode is True or x.device.type == "cpu"


def recompute(fn: Any, modules: Sequence[nn.Module], *inputs: Any) -> Any:
    """``fn(*inputs)`` that saves only its inputs for backward and runs ``fn`` again in backward (checkpointing).

    Unlike a plain ``torch.utils.checkpoint``, the batch norms in ``modules`` update their running statistics
    once (in the forward), not again in the recomputation.

    Inside ``torch.compile`` it runs ``fn(*inputs)`` as it is: the compiler cannot trace a checkpoint with
    these contexts, and its own partitioner decides what is saved for backward and what is recomputed. Outputs,
    gradients and running statistics are the same; the memory is what the compiler chooses.

    Args:
        fn: the function to recompute (deterministic, or using only torch's RNG).
        modules: the modules ``fn`` uses (their batch norms are frozen during the recomputation).
        *inputs: the inputs of ``fn`` (tensors and other values, e.g. a target size).

    Returns:
        ``fn(*inputs)``.
    """

    if torch.compiler.is_compiling():
        return fn(*inputs)

    def contexts() -> tuple[AbstractContextManager, AbstractContextManager]:
        return nullcontext(), frozen_norm_stats(modules)

    return checkpoint(fn, *inputs, use_reentrant=False, context_fn=contexts)


def _se(cfg: LayerConfig, channels: int, in_channels: int, se_ratio: float) -> nn.Module:
    if se_ratio <= 0:
        return nn.Identity()
    return SqueezeExcite(cfg, channels, max(1, round(in_channels * se_ratio)))


class _Block(nn.Module):
    """Common residual logic: ``x + drop_path(f(x))`` when the shapes allow and ``skip`` is set."""

    has_skip: bool

    def _init_skip(self, in_channels: int, out_channels: int, stride: Sequence[int], skip: bool,
                   drop_path_rate: float) -> None:
        self.has_skip = bool(skip and in_channels == out_channels and all(s == 1 for s in stride))
        self.drop_path = DropPath(drop_path_rate) if self.has_skip and drop_path_rate > 0 else nn.Identity()

    def residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Add the (stochastically dropped) branch ``y`` to ``x`` when this block has a skip."""
        return x + self.drop_path(y) if self.has_skip else y


class ConvNormAct(_Block):
    """``conv(k, stride) -> norm -> act`` (EfficientNetV2 first stage), with optional residual."""

    def __init__(self, cfg: LayerConfig, in_channels: int, out_channels: int, kernel: Sequence[int],
                 stride: Sequence[int], expansion: float = 1.0, se_ratio: float = 0.0, skip: bool = True,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self._init_skip(in_channels, out_channels, stride, skip, drop_path_rate)
        self.conv = cfg.conv(in_channels, out_channels, kernel, stride)
        self.bn1 = cfg.bn(out_channels)
        self.act1 = cfg.make_act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.residual(x, norm_act(self.bn1, self.act1, self.conv(x)))


class DepthwiseSeparable(_Block):
    """Depthwise conv -> norm -> act -> SE -> pointwise conv -> norm (EfficientNet V1 first stage)."""

    def __init__(self, cfg: LayerConfig, in_channels: int, out_channels: int, kernel: Sequence[int],
                 stride: Sequence[int], expansion: float = 1.0, se_ratio: float = 0.0, skip: bool = True,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self._init_skip(in_channels, out_channels, stride, skip, drop_path_rate)
        self.conv_dw = cfg.conv(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.bn1 = cfg.bn(in_channels)
        self.act1 = cfg.make_act()
        self.se = _se(cfg, in_channels, in_channels, se_ratio)
        self.conv_pw = cfg.conv(in_channels, out_channels, 1)
        self.bn2 = cfg.bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = self.se(norm_act(self.bn1, self.act1, self.conv_dw(x)))
        return self.residual(x, self.bn2(self.conv_pw(y)))


class MBConv(_Block):
    """Inverted residual: 1x1 expand -> norm/act -> depthwise k -> norm/act -> SE -> 1x1 project -> norm."""

    def __init__(self, cfg: LayerConfig, in_channels: int, out_channels: int, kernel: Sequence[int],
                 stride: Sequence[int], expansion: float = 6.0, se_ratio: float = 0.0, skip: bool = True,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self._init_skip(in_channels, out_channels, stride, skip, drop_path_rate)
        mid = make_divisible(in_channels * expansion)
        self.conv_pw = cfg.conv(in_channels, mid, 1)
        self.bn1 = cfg.bn(mid)
        self.act1 = cfg.make_act()
        self.conv_dw = cfg.conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = cfg.bn(mid)
        self.act2 = cfg.make_act()
        self.se = _se(cfg, mid, in_channels, se_ratio)
        self.conv_pwl = cfg.conv(mid, out_channels, 1)
        self.bn3 = cfg.bn(out_channels)
        self.recompute = cfg.recompute

    def _expand(self, x: torch.Tensor) -> torch.Tensor:
        return norm_act(self.bn1, self.act1, self.conv_pw(x))

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.conv_pwl(self.se(norm_act(self.bn2, self.act2, y))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.training and torch.is_grad_enabled() and recompute_active(self.recompute, x):
            # autograd keeps x instead of the 1x1 conv output and the norm output (two hidden-width tensors);
            # the expansion is recomputed in backward
            return self.residual(x, self._project(self.conv_dw(recompute(self._expand, (self.conv_pw, self.bn1), x))))
        return self.residual(x, self._project(self.conv_dw(self._expand(x))))


class FusedMBConv(_Block):
    """Fused-MBConv (EfficientNetV2): full k-conv expand -> norm/act -> SE -> 1x1 project -> norm."""

    def __init__(self, cfg: LayerConfig, in_channels: int, out_channels: int, kernel: Sequence[int],
                 stride: Sequence[int], expansion: float = 4.0, se_ratio: float = 0.0, skip: bool = True,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self._init_skip(in_channels, out_channels, stride, skip, drop_path_rate)
        mid = make_divisible(in_channels * expansion)
        self.conv_exp = cfg.conv(in_channels, mid, kernel, stride)
        self.bn1 = cfg.bn(mid)
        self.act1 = cfg.make_act()
        self.se = _se(cfg, mid, in_channels, se_ratio)
        self.conv_pwl = cfg.conv(mid, out_channels, 1)
        self.bn2 = cfg.bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = self.se(norm_act(self.bn1, self.act1, self.conv_exp(x)))
        return self.residual(x, self.bn2(self.conv_pwl(y)))


#: Block type (as in block strings) -> block class.
BLOCKS: dict[str, type[_Block]] = {
    "ds": DepthwiseSeparable,
    "mb": MBConv,
    "fmb": FusedMBConv,
    "cba": ConvNormAct,
}
