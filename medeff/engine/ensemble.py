"""Averaging several networks and flipped views (fold ensembles, flip test-time augmentation).

:class:`AveragedNet` wraps nets with the same outputs and returns *logits of the averaged probabilities*, so every
caller that applies softmax (or sigmoid for one logit) and argmax downstream sees the mean probability of the
members and views: ``log(mean softmax)`` for ``K >= 2`` channels, ``logit(mean sigmoid)`` for one. Segmentation
outputs of flipped views are flipped back before averaging; classification outputs are not spatial.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from medeff.engine.inference import first_output

__all__ = ["AveragedNet", "flip_views"]

_EPS = 1e-7


def flip_views(spatial_dims: int, mode: str | None) -> list[tuple[int, ...]]:
    """The flips of a TTA mode: ``None``/``none`` -> identity only; ``flip`` -> every subset of spatial axes.

    Returns:
        A list of tuples of tensor dims to flip (``()`` = identity), identity first.
    """
    if mode in (None, "", "none"):
        return [()]
    if mode != "flip":
        from medeff.errors import ConfigError

        raise ConfigError(f"tta={mode!r} is not known.", hint="use tta=flip or tta=none.")
    axes = list(range(2, 2 + spatial_dims))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _probs(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _logits(p: torch.Tensor, channels: int) -> torch.Tensor:
    p = p.clamp(_EPS, 1 - _EPS)
    return torch.log(p / (1 - p)) if channels == 1 else torch.log(p)


class AveragedNet(nn.Module):
    """Mean probabilities over member nets and flipped input views.

    Args:
        nets: members (same task and outputs).
        flips: tuples of tensor dims to flip, e.g. ``flip_views(3, "flip")``; ``[()]`` for none.
        joint: members return ``(seg_logits, class_logits)``.
        spatial_output: the (first) output is a spatial map to flip back (segmentation / joint).
    """

    def __init__(self, nets: Sequence[nn.Module], flips: Sequence[tuple[int, ...]] = ((),), *, joint: bool = False,
                 spatial_output: bool = True) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.flips = [tuple(f) for f in flips] or [()]
        self.joint, self.spatial_output = joint, spatial_output

    def forward(self, x: torch.Tensor):
        seg_sum = cls_sum = None
        n = 0
        for net in self.nets:
            for dims in self.flips:
                out = net(torch.flip(x, dims) if dims else x)
                seg, cls = (out[0], out[1]) if self.joint else (out, None)
                seg = first_output(seg)
                if dims and self.spatial_output:
                    seg = torch.flip(seg, dims)
                p = _probs(seg)
                seg_sum = p if seg_sum is None else seg_sum + p
                if cls is not None:
                    q = _probs(cls)
                    cls_sum = q if cls_sum is None else cls_sum + q
                n += 1
        seg_logits = _logits(seg_sum / n, seg.shape[1])
        if not self.joint:
            return seg_logits
        return seg_logits, _logits(cls_sum / n, cls.shape[1])
