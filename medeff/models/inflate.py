"""Adapting pretrained convolution weights: input-channel adaptation (RGB -> CT) and 2D -> 3D inflation.

Input channels (the stem): a filter bank for ``c`` input channels becomes one for ``k`` channels by

* ``k == 1``: the sum over the source channels (a grey image fed as ``c`` identical channels gives the same
  output as the summed filter on one channel: exact);
* otherwise: the source channels repeated cyclically (``new[:, i] = old[:, i % c]``) and scaled by ``c / k``, so
  ``k`` identical channels give the same response as ``c`` identical channels when ``k`` is a multiple of ``c``
  (exact), and approximately otherwise (the activation scale is kept);
* or, with ``mode="average"``, every channel gets the mean of the source filters.

Inflation (Carreira & Zisserman's "I3D" rule): a 2D kernel ``(O, I, kh, kw)`` becomes ``(O, I, kd, kh, kw)`` by
repeating it ``kd`` times along the new leading (depth) axis and dividing by ``kd``. For an input that is
constant along depth, each 3D output then equals the 2D output wherever the depth window lies inside the
volume (see :func:`inflate_weight` and ``docs/models.md`` for the exact guarantee); a depth kernel of 1 is a
plain copy. The alternative ``mode="center"`` puts the 2D kernel in the central depth slice (zeros elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["INFLATE_MODES", "IN_CHANNELS_MODES", "adapt_input_channels", "inflate_weight"]

#: Stem adaptation rules: ``sum`` (above; timm's rule too) and ``average`` (every channel gets the mean filter).
IN_CHANNELS_MODES = ("sum", "average")
#: 2D -> 3D rules: ``mean`` (I3D: repeated along depth, divided by the depth) and ``center`` (the 2D kernel in the
#: central depth slice, zeros elsewhere).
INFLATE_MODES = ("mean", "center")


def adapt_input_channels(weight: torch.Tensor, in_channels: int, mode: str = "sum") -> torch.Tensor:
    """Adapt a convolution weight ``(O, c, *k)`` to ``in_channels`` input channels.

    Args:
        weight: the source weight.
        in_channels: wanted input channels ``k``.
        mode: ``"sum"``: the sum over channels for ``k == 1``, else the channels repeated cyclically times
            ``c / k``. ``"average"``: every one of the ``k`` channels gets the mean of the ``c`` filters (a
            ``k``-channel input of identical channels then gives ``k / c`` times the response of the same grey
            image in ``c`` channels: exact for ``k == c``, a third of it for one CT channel from RGB; use it when
            the CT input is normalised to the spread of all three RGB channels together).

    Returns:
        ``(O, k, *k)``.

    Raises:
        ValueError: ``in_channels < 1``, a weight with fewer than 3 dimensions, or an unknown ``mode``.
    """
    if in_channels < 1 or weight.ndim < 3:
        raise ValueError(f"cannot adapt a weight of shape {tuple(weight.shape)} to {in_channels} input channels.")
    if mode not in IN_CHANNELS_MODES:
        raise ValueError(f"in_channels_mode must be one of {IN_CHANNELS_MODES}, got {mode!r}.")
    c = weight.shape[1]
    if mode == "average":
        return weight.mean(dim=1, keepdim=True).expand(-1, in_channels, *weight.shape[2:]).clone()
    if in_channels == c:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels, device=weight.device) % c
    return weight.index_select(1, idx) * (c / in_channels)


def inflate_weight(weight: torch.Tensor, kernel: Sequence[int], mode: str = "mean") -> torch.Tensor:
    """Inflate an N-d convolution weight to N+1 dims by repeating along a new leading axis, divided by its size.

    The guarantee: let ``w3 = inflate_weight(w2, (kd, kh, kw))``. For ``x3[:, :, d] = x2`` (constant along
    depth), ``conv3d(x3, w3)[:, :, d] == conv2d(x2, w2)`` at every depth ``d`` whose window ``d - kd//2 ..
    d + kd//2`` lies inside the volume (with zero padding, the border slices see part of the window as zeros;
    with depth-periodic or replicate padding every slice matches). Strides and in-plane padding are unchanged,
    so whole networks keep the property layer by layer (norms and activations act per voxel or, for global
    means such as squeeze-excitation, see the same values when every slice matches).

    With ``mode="center"`` the 2D kernel sits in the central depth slice (index ``kd // 2``) and the others are
    zero: every output slice is then the 2D network applied to its own input slice, for any input (not only
    depth-constant ones), any depth padding and any depth stride (which then picks every other slice). Training
    starts from a slice-wise 2D network and learns the depth context; mean inflation starts from depth-averaged
    context instead.

    Args:
        weight: ``(O, I, *k)``.
        kernel: the target kernel, one more axis than ``k``; ``kernel[1:]`` must equal ``k``.
        mode: ``"mean"`` (default) or ``"center"`` (see :data:`INFLATE_MODES`).

    Returns:
        ``(O, I, kernel[0], *k)``.

    Raises:
        ValueError: the in-plane kernel sizes differ, or an unknown ``mode``.
    """
    if mode not in INFLATE_MODES:
        raise ValueError(f"inflate mode must be one of {INFLATE_MODES}, got {mode!r}.")
    kernel = tuple(int(v) for v in kernel)
    if len(kernel) != weight.ndim - 1 or kernel[1:] != tuple(weight.shape[2:]):
        raise ValueError(f"cannot inflate a kernel {tuple(weight.shape[2:])} to {kernel}: the trailing sizes must "
                         "match (only a leading depth axis is added).")
    depth = kernel[0]
    if mode == "center":
        out = weight.new_zeros((*weight.shape[:2], depth, *weight.shape[2:]))
        out[:, :, depth // 2] = weight
        return out
    return weight.unsqueeze(2).repeat(1, 1, depth, *([1] * (weight.ndim - 2))) / depth
