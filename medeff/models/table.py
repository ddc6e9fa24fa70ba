"""The model table of ``docs/models.md``: multipliers, resolution, parameters and multiply-adds per variant.

Regenerate with ``python -m medeff.models.table`` (prints Markdown). Everything is computed from the
registry on the meta device (no memory, no weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from medeff.models.factory import create_model, get_variant, list_models

__all__ = ["count_macs", "markdown_table", "model_table"]


def count_macs(model: torch.nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass (``FlopCounterMode`` FLOPs / 2), on the meta device.

    Args:
        model: a model whose parameters live on the meta device (or CPU; the input then lives there too).
        input_shape: ``(B, C, *spatial)``.
    """
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.empty(*input_shape, device=device))
    return counter.get_total_flops() // 2


def model_table(names: Sequence[str] | None = None, *, spatial_dims: int = 2) -> list[dict[str, Any]]:
    """One row per model: name, phi, width, depth, resolution, dropout, params (3 channels, 1000 classes), GMACs.

    Args:
        names: models to list (default: all of :func:`list_models`).
        spatial_dims: 2 (ImageNet-style numbers) or 3 (cube of the resolution; slow for big models).
    """
    rows = []
    for name in names or list_models():
        variant = get_variant(name)
        s = variant.scaling
        with torch.device("meta"):
            model = create_model(name, spatial_dims=spatial_dims, in_channels=3, num_classes=1000)
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, (1, 3) + (s.resolution,) * spatial_dims)
        rows.append({"name": name, "arch": variant.arch, "phi": s.phi, "width": s.width, "depth": s.depth,
                     "resolution": s.resolution, "dropout": s.dropout, "params_m": params / 1e6, "gmacs": macs / 1e9})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Render :func:`model_table` rows as a Markdown table."""
    lines = ["| name | arch | phi | width | depth | resolution | dropout | params (M) | GMACs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        phi = "-" if r["phi"] is None else f"{r['phi']:g}"
        lines.append(f"| {r['name']} | {r['arch']} | {phi} | {r['width']:g} | {r['depth']:g} | {r['resolution']} | "
                     f"{r['dropout']:g} | {r['params_m']:.2f} | {r['gmacs']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table(model_table()))
