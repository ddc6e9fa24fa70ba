"""Shared test helpers for the model tests."""

from __future__ import annotations

import functools

import torch

from medeff.models import create_model

__all__ = ["meta_model", "zero_model"]


@functools.lru_cache(maxsize=None)
def meta_model(name: str) -> torch.nn.Module:
    """The 2D, 3-channel, 1000-class model ``name`` on the meta device (no memory, no init cost), built once."""
    with torch.device("meta"):
        return create_model(name, spatial_dims=2, in_channels=3, num_classes=1000)


def zero_model(name: str, **kwargs) -> torch.nn.Module:
    """Model ``name`` built on the meta device, then materialised on CPU with zeros (skips the slow random init).

    Good for shape checks only; in eval mode.
    """
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    return model.eval()
