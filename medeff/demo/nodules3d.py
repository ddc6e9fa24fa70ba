"""Phantom chest CT volumes with labelled 3D nodules and their world positions, for the lung triage pipeline.

Each scan is a torso with two air-filled lungs; a few nodules sit inside the lungs. Benign nodules are small, round
and smooth (some with a calcified core); malignant ones larger, lobulated and spiculated, as in
:func:`medeff.demo.phantom.nodule_patch` but built in 3D directly on the scan grid. Scans are NIfTI files on an
anisotropic LPS-aligned grid with a non-zero origin, so the world -> voxel path of ``medeff crops`` is exercised.
The positions CSV has the columns ``medeff crops`` reads: ``series, x_mm, y_mm, z_mm, size_mm, label, patient_id``
(world LPS mm; ``size_mm`` left empty, so the configured cube is used). No real patient data is involved.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from medeff.io.base import ImageData
from medeff.utils.atomic import check_writable, write_text_atomic

__all__ = ["make_nodule_scans", "nodule_mask"]


def nodule_mask(grid_mm: tuple[np.ndarray, np.ndarray, np.ndarray], centre_mm: np.ndarray,
                rng: np.random.Generator, *, malignant: bool) -> tuple[np.ndarray, float]:
    """Boolean mask of one nodule on a grid of world coordinates (mm), and its diameter (mm)."""
    d = [g - c for g, c in zip(grid_mm, centre_mm)]
    r = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + 1e-6
    u = [x / r for x in d]
    diameter = float(rng.uniform(10, 24) if malignant else rng.uniform(5, 14))
    radius = diameter / 2
    if malignant:
        bound = 1.0
        for _ in range(3):  # lobes: smooth bumps towards random directions
            v = rng.normal(size=3)
            v /= np.linalg.norm(v)
            bound = bound + rng.uniform(0.1, 0.25) * np.clip(sum(a * b for a, b in zip(u, v)), 0, None) ** 2
        for _ in range(int(rng.integers(6, 12))):  # spicules: narrow spikes
            v = rng.normal(size=3)
            v /= np.linalg.norm(v)
            bound = bound + rng.uniform(0.3, 0.7) * np.clip(sum(a * b for a, b in zip(u, v)), 0, None) ** 40
    else:
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        bound = 1.0 + rng.uniform(0.0, 0.08) * sum(a * b for a, b in zip(u, v))
    return r <= radius * bound, diameter


def make_nodule_scans(positions_csv: str | Path, *, n_scans: int = 24, nodules_per_scan: tuple[int, int] = (2, 4),
                      malignant_fraction: float = 0.4, shape: tuple[int, int, int] = (120, 100, 40),
                      spacing: tuple[float, float, float] = (2.0, 2.0, 4.0), seed: int = 0,
                      overwrite: bool = False) -> Path:
    """Write ``scans/scan_NNN.nii.gz`` beside ``positions_csv`` and the positions CSV itself.

    Args:
        positions_csv: the CSV to write (its folder receives ``scans/``).
        n_scans: number of phantom scans (one patient each).
        nodules_per_scan: inclusive range of nodules per scan.
        malignant_fraction: probability that a nodule is malignant.
        shape: voxels per scan ``(i, j, k)``.
        spacing: mm per axis.
        seed: random seed.
        overwrite: replace existing files.

    Returns:
        ``positions_csv``.
    """
    from medeff.io import write_image

    out = Path(positions_csv)
    check_writable(out, overwrite=overwrite)
    rng = np.random.default_rng(seed)
    grid_idx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    rows = []
    for s in range(n_scans):
        origin = np.array([-shape[0] * spacing[0] / 2, -shape[1] * spacing[1] / 2, rng.uniform(-300, -100)])
        grid = tuple(origin[a] + grid_idx[a] * spacing[a] for a in range(3))  # world LPS mm (identity direction)
        ni, nj, nk = (shape[a] * spacing[a] for a in range(3))
        x, y, z = (grid[a] - origin[a] for a in range(3))
        body = ((x - ni / 2) / (ni * 0.46)) ** 2 + ((y - nj / 2) / (nj * 0.42)) ** 2 <= 1
        hu = np.where(body, 30.0, -1000.0).astype(np.float32)
        lungs = []
        for side in (-1, 1):
            lung = (((x - ni / 2 - side * ni * 0.2) / (ni * 0.16)) ** 2 + ((y - nj * 0.48) / (nj * 0.3)) ** 2
                    + ((z - nk / 2) / (nk * 0.6)) ** 2) <= 1
            hu[lung] = -850.0
            lungs.append(lung)
        n_nod = int(rng.integers(nodules_per_scan[0], nodules_per_scan[1] + 1))
        lung_idx = np.argwhere(lungs[0] | lungs[1])
        for _ in range(n_nod):
            malignant = bool(rng.random() < malignant_fraction)
            c = lung_idx[int(rng.integers(len(lung_idx)))]
            centre = np.array([grid[a][tuple(c)] for a in range(3)], dtype=np.float64)
            lo = np.maximum(c - np.ceil(20 / np.asarray(spacing)).astype(int), 0)
            hi = np.minimum(c + np.ceil(20 / np.asarray(spacing)).astype(int) + 1, shape)
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            mask, diameter = nodule_mask(tuple(g[box] for g in grid), centre, rng, malignant=malignant)
            tissue = rng.uniform(-10, 60) if malignant else rng.uniform(-30, 40)
            sub = hu[box]
            sub[mask] = tissue + rng.normal(0, 20, size=int(mask.sum()))
            if not malignant and rng.random() < 0.3:  # calcified core, a benign sign
                core = nodule_mask(tuple(g[box] for g in grid), centre, np.random.default_rng(0), malignant=False)[0]
                r2 = sum((g[box] - cc) ** 2 for g, cc in zip(grid, centre))
                sub[core & (r2 < (0.3 * diameter) ** 2)] = rng.uniform(250, 500)
            rows.append({"series": f"scans/scan_{s:03d}.nii.gz", "x_mm": round(float(centre[0]), 3),
                         "y_mm": round(float(centre[1]), 3), "z_mm": round(float(centre[2]), 3), "size_mm": "",
                         "label": "malignant" if malignant else "benign", "patient_id": f"phantom_{s:03d}",
                         "diameter_mm": round(diameter, 2)})
        hu += rng.normal(0, 12, size=shape).astype(np.float32)
        img = ImageData(np.round(hu).astype(np.int16), spacing, tuple(origin), np.eye(3),
                        {"modality": "CT", "source": "medeff phantom"})
        write_image(img, out.parent / f"scans/scan_{s:03d}.nii.gz", overwrite=overwrite)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out, buf.getvalue(), overwrite=overwrite)
    return out
