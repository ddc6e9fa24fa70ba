"""Compound scaling as small pure functions (EfficientNet, Tan & Le 2019).

depth ``d = alpha**phi``, width ``w = beta**phi``, resolution ``r = gamma**phi`` with alpha=1.2, beta=1.1,
gamma=1.15. FLOPs grow as ``d * w**2 * r**D`` for ``D`` spatial dimensions, so one phi step multiplies
FLOPs by ``alpha * beta**2 * gamma**2 ~ 1.92`` in 2D but ``alpha * beta**2 * gamma**3 ~ 2.21`` in 3D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "ALPHA",
    "BETA",
    "B_VARIANTS",
    "GAMMA",
    "Scaling",
    "flops_growth_per_phi",
    "make_divisible",
    "round_channels",
    "round_repeats",
    "scaling_from_phi",
]

ALPHA = 1.2
BETA = 1.1
GAMMA = 1.15
BASE_RESOLUTION = 224


@dataclass(frozen=True)
class Scaling:
    """Multipliers of one variant.

    Attributes:
        width: channel multiplier.
        depth: repeat multiplier.
        resolution: training image size (per axis) the variant was designed for.
        dropout: dropout rate before the classifier.
        phi: compound coefficient, when the variant was derived from one.
    """

    width: float = 1.0
    depth: float = 1.0
    resolution: int = BASE_RESOLUTION
    dropout: float = 0.2
    phi: float | None = None


#: Published EfficientNet B0-B7 multipliers (width, depth, resolution, dropout). They were rounded by hand
#: by the authors and differ slightly from ``scaling_from_phi`` (e.g. B1 keeps width 1.0).
B_VARIANTS: dict[str, Scaling] = {
    "b0": Scaling(1.0, 1.0, 224, 0.2, 0),
    "b1": Scaling(1.0, 1.1, 240, 0.2, 1),
    "b2": Scaling(1.1, 1.2, 260, 0.3, 2),
    "b3": Scaling(1.2, 1.4, 300, 0.3, 3),
    "b4": Scaling(1.4, 1.8, 380, 0.4, 4),
    "b5": Scaling(1.6, 2.2, 456, 0.4, 5),
    "b6": Scaling(1.8, 2.6, 528, 0.5, 6),
    "b7": Scaling(2.0, 3.1, 600, 0.5, 7),
}


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``).

    If rounding lost more than ``1 - round_limit`` of the value, one ``divisor`` is added back.
    """
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < round_limit * value:
        new += divisor
    return new


def round_channels(channels: int, width: float = 1.0, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Scale ``channels`` by ``width`` and round with :func:`make_divisible` (unchanged when ``width == 1``)."""
    if width == 1.0:
        return int(channels)
    return make_divisible(channels * width, divisor, round_limit)


def round_repeats(repeats: int, depth: float = 1.0) -> int:
    """Scale a stage's repeat count by ``depth``, rounding up."""
    return int(math.ceil(repeats * depth))


def scaling_from_phi(phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA,
                     base_resolution: int = BASE_RESOLUTION) -> Scaling:
    """Multipliers for any (float) compound coefficient ``phi``.

    Resolution is rounded to a multiple of 8; dropout is interpolated as ``0.2 + 0.05 * phi`` (capped at 0.5),
    which reproduces the published B0/B2/B4/B6 values.

    Raises:
        ValueError: negative ``phi``.
    """
    if phi < 0:
        raise ValueError(f"phi must be >= 0, got {phi}.")
    resolution = int(round(base_resolution * gamma**phi / 8) * 8)
    return Scaling(width=beta**phi, depth=alpha**phi, resolution=resolution,
                   dropout=min(0.5, 0.2 + 0.05 * phi), phi=float(phi))


def flops_growth_per_phi(spatial_dims: int = 2, alpha: float = ALPHA, beta: float = BETA,
                         gamma: float = GAMMA) -> float:
    """FLOPs factor of one phi step: ``alpha * beta**2 * gamma**spatial_dims`` (~1.92 in 2D, ~2.21 in 3D).

    Raises:
        ValueError: ``spatial_dims`` not in 1..3.
    """
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
    return alpha * beta**2 * gamma**spatial_dims
