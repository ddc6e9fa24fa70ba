"""Inference copy of a model with every batch norm folded into the convolution before it.

In eval mode ``bn(conv(x))`` is an affine map per channel of the conv's output, so it equals a convolution with
scaled weights and a shifted bias: one pass over the activations less per conv-norm pair, same results up to float
rounding. :func:`fold_batch_norms` returns a folded copy (the original model is untouched) for inference only;
the copy must not be trained.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["FOLD_PAIRS", "fold_batch_norms"]

#: Module class name -> ``(conv attribute, norm attribute)`` pairs in which the module computes ``norm(conv(x))``
#: (stem/head, the blocks, the decoder's conv-norm-act).
FOLD_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "MBConv": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "DepthwiseSeparable": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "FusedMBConv": (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
    "ConvNormAct": (("conv", "bn1"),),
    "_ConvNormAct": (("conv", "norm"),),
}

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _foldable(module: nn.Module, conv_name: str, norm_name: str) -> bool:
    conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
    return (isinstance(conv, _CONVS) and type(norm) in _NORMS and norm.track_running_stats
            and norm.running_mean is not None and conv.out_channels == norm.num_features)


@torch.no_grad()
def _fold(conv: nn.Module, norm: nn.Module) -> None:
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps) if norm.affine else \
        1.0 / torch.sqrt(norm.running_var + norm.eps)
    shift = (norm.bias if norm.affine else 0.0) - norm.running_mean * scale
    conv.weight.mul_(scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1)))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with each batch norm that follows a convolution folded into it.

    Args:
        model: a medeff model (pairs are found by module class and attribute name, see :data:`FOLD_PAIRS`).

    Returns:
        The folded copy, in eval mode, parameters without gradients; the folded norms are ``nn.Identity``.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        for conv_name, norm_name in FOLD_PAIRS.get(type(module).__name__, ()):
            if _foldable(module, conv_name, norm_name):
                _fold(getattr(module, conv_name), getattr(module, norm_name))
                setattr(module, norm_name, nn.Identity())
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded
