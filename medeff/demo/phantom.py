"""Synthetic CT phantoms for the demo and for tests: no real patient data, fully seeded.

Two kinds of data are generated:

* :func:`make_nodule_archive` writes a nodule-slice archive in the same layout as the LIDC-style
  ``nodule_slices_64x64.npz`` + ``index.csv`` (images, labels, nodule_key, slice_index). Benign nodules are
  small, round and smooth (some calcified); malignant ones larger, lobulated and spiculated. The task is
  learnable but not trivial: sizes overlap and noise is added.
* :func:`make_phantom_ct` builds an abdomen/chest-like CT volume in Hounsfield units with an organ label map
  (lungs, liver, spleen, kidneys, spine at adult sizes, in intra-abdominal fat inside a muscle wall), returned as
  :class:`medeff.io.ImageData` with real geometry (anisotropic spacing, non-zero origin) so that geometry round
  trips are exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medeff.io.base import ImageData
from medeff.utils.atomic import atomic_path, write_text_atomic

__all__ = ["ORGAN_LABELS", "make_nodule_archive", "make_phantom_ct", "nodule_patch"]

ORGAN_LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4, "lung": 5, "spine": 6}


def nodule_patch(rng: np.random.Generator, *, malignant: bool, size: int = 64, z: float = 0.0) -> tuple[np.ndarray, float]:
    """One nodule cross-section as HU values, background masked to air (-1000).

    Args:
        rng: random generator.
        malignant: draw a malignant-looking (lobulated, spiculated, larger) or benign (round, smooth) nodule.
        size: patch side in pixels (0.7 mm pixels).
        z: relative position of the slice through the nodule in [-1, 1] (cross-sections shrink towards the poles).

    Returns:
        ``(patch, diameter_mm)``.
    """
    yy, xx = np.mgrid[:size, :size].astype(np.float32) - (size - 1) / 2
    r = np.hypot(yy, xx)
    theta = np.arctan2(yy, xx)
    diameter = float(rng.uniform(10, 26) if malignant else rng.uniform(5, 18))
    radius_px = diameter / 0.7 / 2 * np.sqrt(max(1e-3, 1 - z**2))
    if malignant:
        lobes = sum(rng.uniform(0.0, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (3, 5, 7))
        spikes = rng.uniform(0.0, 0.3) * np.clip(np.cos(rng.integers(9, 16) * theta), 0, None) ** 8
        boundary = radius_px * (1 + lobes + spikes)
        base = rng.uniform(-10, 60)
    else:
        boundary = radius_px * (1 + rng.uniform(0.0, 0.12) * np.cos(3 * theta + rng.uniform(0, 2 * np.pi)))
        base = rng.uniform(-30, 40)
    mask = r <= boundary
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    tissue = base + rng.normal(0, 25, size=(size, size)) - 6 * (r / max(radius_px, 1))
    if not malignant and rng.random() < 0.25:  # central calcification, a benign sign
        tissue = np.where(r < 0.35 * radius_px, rng.uniform(250, 500), tissue)
    hu[mask] = tissue[mask]
    return hu, diameter


def _hu_to_uint8(hu: np.ndarray, window: tuple[float, float] = (-1000.0, 400.0)) -> np.ndarray:
    lo, hi = window
    return np.clip((hu - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)


def make_nodule_archive(
    out_dir: str | Path,
    *,
    n_exams: int = 60,
    nodules_per_exam: tuple[int, int] = (1, 3),
    slices_per_nodule: tuple[int, int] = (3, 7),
    malignant_fraction: float = 0.3,
    seed: int = 0,
) -> Path:
    """Write ``nodule_slices_64x64.npz`` and ``index.csv`` in the LIDC-style archive layout.

    Images are uint8 (HU window -1000..400) with the background masked to 0, one row per slice;
    ``nodule_key`` is ``exam_id/nodule_id``; labels are per nodule (0 benign, 1 malignant).

    Returns:
        ``out_dir``.
    """
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, labels, keys, slices, rows = [], [], [], [], []
    for e in range(n_exams):
        exam_id = f"phantom{e:04d}"
        for n in range(int(rng.integers(nodules_per_exam[0], nodules_per_exam[1] + 1))):
            malignant = bool(rng.random() < malignant_fraction)
            n_sl = int(rng.integers(slices_per_nodule[0], slices_per_nodule[1] + 1))
            state = rng.bit_generator.state
            for s, z in enumerate(np.linspace(-0.7, 0.7, n_sl)):
                rng.bit_generator.state = state  # same nodule shape on every slice, shrinking at the poles
                hu, diameter = nodule_patch(rng, malignant=malignant, z=float(z))
                img = _hu_to_uint8(hu)
                img[hu <= -999.0] = 0
                images.append(img)
                labels.append(int(malignant))
                keys.append(f"{exam_id}/{n}")
                slices.append(s)
                rows.append((len(rows), exam_id, n, s, int(malignant), round(diameter, 2)))
            rng = np.random.default_rng(rng.integers(1 << 31) + e * 1000 + n)
    with atomic_path(out / "nodule_slices_64x64.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, images=np.stack(images), labels=np.asarray(labels, np.uint8),
                                nodule_key=np.asarray(keys), slice_index=np.asarray(slices, np.int64))
    lines = ["row,exam_id,nodule_id,slice,label,diameter_mm"] + [",".join(map(str, r)) for r in rows]
    write_text_atomic(out / "index.csv", "\n".join(lines) + "\n")
    return out


def _ellipsoid(grid: tuple[np.ndarray, ...], centre, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def make_phantom_ct(
    shape: tuple[int, int, int] = (96, 80, 40),
    spacing: tuple[float, float, float] = (4.0, 4.0, 5.0),
    *,
    seed: int = 0,
    noise_hu: float = 15.0,
) -> tuple[ImageData, ImageData]:
    """A torso phantom in HU with an organ label map (see :data:`ORGAN_LABELS`), same geometry for both.

    Organ positions and sizes vary with the seed so that several phantoms form a small training set.
    Index axes are (i: right->left, j: anterior->posterior, k: inferior->superior), i.e. LPS-aligned.

    Returns:
        ``(ct, labels)``: int16 HU and uint8 labels.
    """
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    ni, nj, nk = shape
    jit = lambda s: 1.0 + rng.uniform(-s, s)  # noqa: E731
    hu = np.full(shape, -1000.0, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    radii = (ni * 0.45 * jit(0.05), nj * 0.4 * jit(0.05))
    r_body = np.sqrt(((grid[0][..., 0] - ni / 2) / radii[0]) ** 2 + ((grid[1][..., 0] - nj / 2) / radii[1]) ** 2)
    r_body = np.broadcast_to(r_body[..., None], shape)
    body = r_body <= 1.0
    # subcutaneous fat, a muscle wall, and fat around the organs inside it (organs stand out as soft tissue in fat)
    hu[body] = -100.0
    hu[body & (r_body > 0.78) & (r_body <= 0.9)] = 50.0

    def put(mask: np.ndarray, value_hu: float, label: int) -> None:
        mask &= body
        hu[mask] = value_hu
        lab[mask] = label

    top = nk * 0.55
    for side in (-1, 1):
        put(_ellipsoid(grid, (ni / 2 + side * ni * 0.2, nj * 0.5, nk * 0.8),
                       (ni * 0.15 * jit(0.1), nj * 0.25 * jit(0.1), nk * 0.35)) & (grid[2] > top), -850.0, 5)
    # Abdominal organs, sized like an adult's in a ~32 x 28 x 19 cm field of view (the demo's 64 x 56 x 32 voxels
    # at 5 x 5 x 6 mm): liver ~16 x 14 x 13 cm on the right (low i), spleen ~6 x 8 x 8 cm on the left, kidneys
    # ~5.5 x 5 x 9 cm either side of the spine. The side tells liver from spleen and the two kidneys apart. HU as in
    # a portal-venous contrast phase (muscle 50, liver 100, spleen 120, kidneys 170); a fat plane separates the
    # spleen from the muscle wall.
    put(_ellipsoid(grid, (ni * 0.33 * jit(0.05), nj * 0.45, nk * 0.45 * jit(0.05)),
                   (ni * 0.25 * jit(0.08), nj * 0.25 * jit(0.08), nk * 0.22 * jit(0.08))), 100.0, 1)
    put(_ellipsoid(grid, (ni * 0.69 * jit(0.02), nj * 0.5 * jit(0.05), nk * 0.5 * jit(0.05)),
                   (ni * 0.095 * jit(0.1), nj * 0.15 * jit(0.1), nk * 0.21 * jit(0.1))), 120.0, 2)
    put(_ellipsoid(grid, (ni * 0.34 * jit(0.03), nj * 0.72, nk * 0.27 * jit(0.1)),
                   (ni * 0.085 * jit(0.1), nj * 0.09 * jit(0.1), nk * 0.23 * jit(0.1))), 170.0, 4)
    put(_ellipsoid(grid, (ni * 0.66 * jit(0.03), nj * 0.72, nk * 0.29 * jit(0.1)),
                   (ni * 0.085 * jit(0.1), nj * 0.09 * jit(0.1), nk * 0.23 * jit(0.1))), 170.0, 3)
    put(_ellipsoid(grid[:2], (ni * 0.5, nj * 0.8), (ni * 0.05, nj * 0.06)), 500.0, 6)
    hu += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    hu[~body] = -1000.0 + rng.normal(0.0, 5.0, size=int((~body).sum()))
    origin = (-spacing[0] * ni / 2, -spacing[1] * nj / 2, -400.0 + float(rng.uniform(-20, 20)))
    meta = {"source": "medeff phantom", "seed": seed}
    ct = ImageData(np.round(hu).astype(np.int16), spacing, origin, np.eye(3), dict(meta, modality="CT"))
    labels = ImageData(lab, spacing, origin, np.eye(3), dict(meta, labels=dict(ORGAN_LABELS)))
    return ct, labels
