"""Size limits of ``medeff crops``: a cube must fit in memory and be no larger than twice its series.

A cube edge of ``n`` voxels costs about ``n**3 * CUT_BYTES_PER_VOXEL`` bytes while it is cut (the resampling
grid in float64) and ``n**3 * KEPT_BYTES_PER_VOXEL`` bytes until every row is done. ``size_mm=100000`` (a typo
for 100) at 1 mm would ask for 10**15 voxels: :func:`check_crop_sizes` refuses such rows before any series is read,
against half the memory available, and :func:`check_crop_extent` refuses cubes more than twice as large as
their series (nearly all padding) once the series is read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medeff.errors import ConfigError, InputError
from medeff.io.base import ImageData

if TYPE_CHECKING:
    from medeff.data.crops import CropTarget

__all__ = ["CUT_BYTES_PER_VOXEL", "KEPT_BYTES_PER_VOXEL", "available_memory", "check_crop_sizes",
           "check_crop_extent"]

CUT_BYTES_PER_VOXEL = 100  # peak working memory of crop_cube per cube voxel (float64 grids, indices, values)
KEPT_BYTES_PER_VOXEL = 4   # a finished crop, held until every row is done


def available_memory() -> int | None:
    """Bytes of memory available to this process now (``MemAvailable``), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"  # pragma: no cover


def _size_key(t: CropTarget, cfg: Any, fmt: str) -> str:
    """Which setting gave this row its cube edge, for the message."""
    if fmt == "pixel_boxes":
        return (f"the cube edge from its boxes (boxes.margin={cfg.boxes.margin}, "
                f"boxes.min_edge_mm={cfg.boxes.min_edge_mm})")
    if t.edge_mm is not None:
        return f"column '{cfg.columns.size}' ({t.edge_mm:g} mm)"
    return f"size_voxels={int(cfg.size_voxels)}"


def check_crop_sizes(targets: Sequence[CropTarget], edges: Sequence[int], spacing: float, cfg: Any, fmt: str,
                     positions: Path, memory: int | None) -> None:
    """Refuse, before any series is read, cubes that could not be cut in the memory available (a cube edge of
    ``n`` voxels needs about ``n**3 * CUT_BYTES_PER_VOXEL`` bytes to cut, every finished crop is kept until the end).

    Raises:
        ConfigError: ``spacing_mm`` or ``size_voxels`` is not positive.
        InputError: a row's cube, or all crops together, would need more than half the memory available.
    """
    if not np.isfinite(spacing) or spacing <= 0:
        raise ConfigError(f"spacing_mm={spacing} is not a positive spacing.", hint="set spacing_mm, e.g. 1.0.")
    if int(cfg.size_voxels) < 1:
        raise ConfigError(f"size_voxels={cfg.size_voxels} is not a cube size.", hint="set size_voxels >= 1, e.g. 48.")
    if memory is None or not targets:
        return
    budget = memory // 2
    for t, n in zip(targets, edges):
        need = n**3 * CUT_BYTES_PER_VOXEL
        if need > budget:
            largest = max(1, int((budget / CUT_BYTES_PER_VOXEL) ** (1 / 3)))
            raise InputError(
                f"Positions CSV '{positions}' row {t.row}: {_size_key(t, cfg, fmt)} asks for a cube of "
                f"{n * spacing:g} mm at spacing_mm={spacing:g}, {n} voxels per edge ({float(n) ** 3:.3g} voxels, "
                f"about {_human(need)} to cut), more than half of the {_human(memory)} of memory available; nothing "
                "was read.", hint=f"give the cube edge in mm (a nodule crop is typically 32-64 mm); at most about "
                f"{largest} voxels per edge fit ({largest * spacing:g} mm at spacing_mm={spacing:g}), or raise "
                "spacing_mm.", path=str(positions))
    total = max(n**3 for n in edges) * CUT_BYTES_PER_VOXEL + sum(n**3 for n in edges) * KEPT_BYTES_PER_VOXEL
    if total > budget:
        raise InputError(f"Positions CSV '{positions}': its {len(targets)} crops together need about {_human(total)}, "
                         f"more than half of the {_human(memory)} of memory available; nothing was read.",
                         hint="split the CSV and cut fewer rows per run, or cut smaller cubes (size_voxels, "
                         "size column) or at a coarser spacing_mm.", path=str(positions))


def check_crop_extent(t: CropTarget, n: int, spacing: float, image: ImageData, cfg: Any, fmt: str,
                      positions: Path) -> None:
    """Refuse a cube whose edge exceeds twice the series' diagonal (such a cube is nearly all padding).

    Raises:
        InputError: naming the row, the setting that gave the size and the largest edge accepted.
    """
    steps = np.asarray(image.spacing[:3], float) * (np.asarray(image.array.shape[:3], float) - 1)
    corner = np.asarray(image.direction, float) @ steps  # world vector from the first to the last voxel
    diagonal = float(np.linalg.norm(corner)) + max(float(v) for v in image.spacing[:3])
    if n * spacing > 2 * diagonal:
        raise InputError(
            f"Positions CSV '{positions}' row {t.row}: {_size_key(t, cfg, fmt)} asks for a cube edge of "
            f"{n * spacing:g} mm, more than twice its series' size ({diagonal:.0f} mm corner to corner); such a cube "
            "is almost all padding and nothing was written.", hint=f"give the cube edge in mm (a nodule crop is "
            f"typically 32-64 mm); this series accepts at most {2 * diagonal:.0f} mm.", path=str(positions))
