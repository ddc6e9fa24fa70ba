"""A fake segmentation checkpoint for fast ``medeff predict`` tests: no training, a network that echoes the input.

``install(monkeypatch, tmp_path)`` makes :func:`medeff.engine.predict.load_model` return :class:`Echo` with a
handmade checkpoint description; the returned path is a placeholder file to pass as ``ckpt``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

SPACING = (0.8, 0.8, 3.0)  # the input grid: fine in-plane, thick slices
NET_SPACING = [2.0, 2.0, 3.0]  # the network's grid


class Echo(torch.nn.Module):
    """Two-class 'network' whose foreground probability is the windowed intensity (a calibrated partial volume)."""

    def forward(self, x):
        p = x[:, :1].clamp(1e-4, 1 - 1e-4)
        return torch.cat([torch.log1p(-p), torch.log(p)], dim=1)


def meta(label_names=("background", "plate")) -> dict:
    pre = {"orientation": "RAS", "spacing": list(NET_SPACING), "intensity": {"mode": "window", "window": [0.0, 1.0]},
           "normalize": None}
    return {"task": "segmentation", "label_names": list(label_names), "class_names": [], "positive_classes": [],
            "threshold": None, "versions": {},
            "data": {"spatial_dims": 3, "preprocessing": pre, "patch_size": [16, 16, 8]},
            "config": {"task": {"roi_size": [16, 16, 8], "sw_batch_size": 2, "overlap": 0.25}}}


def install(monkeypatch, folder: Path, label_names=("background", "plate")) -> Path:
    """Patch ``load_model``; returns the placeholder checkpoint file (in ``folder/run/checkpoints``)."""
    import medeff.engine.predict as P

    ckpt = folder / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"placeholder")
    monkeypatch.setattr(P, "load_model", lambda path, **kw: (Echo().eval(), meta(label_names)))
    return ckpt


def thin_plate(shape=(48, 48, 12), thickness_mm: float = 1.8) -> np.ndarray:
    """An oblique plate about two voxels thick on the input grid (thinner than one voxel of the network's grid)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    x, y, z = i * SPACING[0], j * SPACING[1], k * SPACING[2]
    dist = np.abs(x - 0.6 * y - 0.3 * z - 10.0) / np.sqrt(1 + 0.36 + 0.09)
    return (dist < thickness_mm / 2).astype(np.float32)


def write_volume(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.diag([*SPACING, 1.0])), str(path))
    return path


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))
