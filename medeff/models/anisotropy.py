"""Per-level strides and kernels for anisotropic volumes (thick-slice CT), derived from voxel spacing.

The rule follows nnU-Net's planner: at each resolution level, pool (stride 2) only the axes whose current
spacing is less than ``max_ratio`` times the finest current spacing; an axis that is already ``>= max_ratio``
coarser keeps stride 1 until the others catch up. Convolutions use kernel size 1 along an axis while it is
that much coarser than the finest one (there is little context to mix across thick slices).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["plan_levels"]


def plan_levels(
    spacing: Sequence[float],
    num_levels: int = 5,
    *,
    max_ratio: float = 2.0,
) -> tuple[list[tuple[int, ...]], list[tuple[int | None, ...] | None]]:
    """Plan strides and kernel overrides for each resolution level from the input voxel spacing.

    Level 0 is the stem; each later level starts at a downsampling stage of the encoder.

    Args:
        spacing: voxel spacing per spatial axis of the network input (any unit), e.g. ``(5.0, 0.7, 0.7)``.
        num_levels: number of levels (``ArchDef.num_levels``, 5 for all built-in architectures).
        max_ratio: anisotropy threshold (nnU-Net uses 2).

    Returns:
        ``(strides, kernels)``: ``strides[l]`` is the per-axis stride entering level ``l``; ``kernels[l]`` is
        ``None`` (keep the blocks' kernels) or a per-axis tuple with ``1`` where the kernel is forced to
        size 1 and ``None`` where the block's own kernel is kept. Both are valid ``strides=``/``kernels=``
        options of :func:`medeff.models.create_model`.

    Raises:
        ValueError: non-positive spacing, ``num_levels < 1`` or ``max_ratio <= 1``.

    Example:
        >>> plan_levels((5.0, 0.7, 0.7))[0]
        [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
    """
    current = [float(s) for s in spacing]
    if not current or any(s <= 0 for s in current):
        raise ValueError(f"spacing must be positive per axis, got {tuple(spacing)}.")
    if num_levels < 1 or max_ratio <= 1:
        raise ValueError(f"need num_levels >= 1 and max_ratio > 1, got {num_levels}, {max_ratio}.")
    strides: list[tuple[int, ...]] = []
    kernels: list[tuple[int | None, ...] | None] = []
    for _ in range(num_levels):
        finest = min(current)
        stride = tuple(2 if s < max_ratio * finest else 1 for s in current)
        current = [s * st for s, st in zip(current, stride)]
        finest = min(current)
        kernel = tuple(1 if s >= max_ratio * finest else None for s in current)
        strides.append(stride)
        kernels.append(kernel if 1 in kernel else None)
    return strides, kernels
