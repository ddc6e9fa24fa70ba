"""Model builders for the benchmark: medeff models and the peers they are compared with.

A side of a benchmark case is described by data, ``{"builder": NAME, "kwargs": {...}}``; :data:`BUILDERS` maps
``NAME`` to a function ``(in_channels, num_classes, spatial_dims, **kwargs) -> nn.Module``. Peers are imported
lazily: MONAI is a medeff dependency, timm is optional (it is only used when importable).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any
from unittest import mock

import torch
from torch import nn

from medeff.utils.options import look_up

__all__ = ["BUILDERS", "PeerUnavailable", "build_side", "import_timm", "peer_available"]


class PeerUnavailable(RuntimeError):
    """A peer library needed by a case cannot be imported (the case is skipped with this message)."""


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``torchvision*`` imports with MagicMock modules (timm imports torchvision at import time only)."""

    def find_spec(self, name, path, target=None):  # noqa: D102
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):  # noqa: D102
        module = mock.MagicMock(name=spec.name)
        module.__path__ = []
        module.__spec__ = spec
        return module

    def exec_module(self, module):  # noqa: D102
        pass


def import_timm() -> ModuleType:
    """Import timm; where torchvision does not import beside the CPU torch build, stub it (timm's models do not use it).

    Returns:
        The ``timm`` module.

    Raises:
        PeerUnavailable: timm is not installed or does not import.
    """
    try:
        import torchvision  # noqa: F401
    except Exception:
        if not any(isinstance(f, _TorchvisionStub) for f in sys.meta_path):
            sys.meta_path.insert(0, _TorchvisionStub())
    try:
        import timm
    except Exception as exc:  # ImportError or a failure inside timm's import
        raise PeerUnavailable(f"timm is not importable ({type(exc).__name__}: {exc}); pip install timm") from exc
    return timm


def _medeff(in_channels: int, num_classes: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    from medeff.models import create_model

    name = kwargs.pop("name", "efficientnet_b0")
    return create_model(name, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **kwargs)


def _monai_efficientnet_bn(in_channels: int, num_classes: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    from monai.networks.nets import EfficientNetBN

    name = kwargs.pop("model_name", "efficientnet-b0")
    return EfficientNetBN(name, pretrained=False, spatial_dims=spatial_dims, in_channels=in_channels,
                          num_classes=num_classes, **kwargs)


def _monai_flexible_unet(in_channels: int, num_classes: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    from monai.networks.nets import FlexibleUNet

    backbone = kwargs.pop("backbone", "efficientnet-b0")
    return FlexibleUNet(in_channels=in_channels, out_channels=num_classes, backbone=backbone, pretrained=False,
                        spatial_dims=spatial_dims, **kwargs)


def _timm(in_channels: int, num_classes: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    if spatial_dims != 2:
        raise ValueError(f"timm models are 2D; the case asks for spatial_dims={spatial_dims}.")
    timm = import_timm()
    name = kwargs.pop("name", "efficientnet_b0")
    return timm.create_model(name, pretrained=False, in_chans=in_channels, num_classes=num_classes, **kwargs)


#: Builder name -> ``(in_channels, num_classes, spatial_dims, **kwargs) -> nn.Module``.
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "medeff": _medeff,
    "monai_efficientnet_bn": _monai_efficientnet_bn,
    "monai_flexible_unet": _monai_flexible_unet,
    "timm": _timm,
}


def peer_available(builder: str) -> str | None:
    """Return None when ``builder``'s library imports, else a one-line reason (used to skip a case)."""
    if builder != "timm":
        return None
    try:
        import_timm()
    except PeerUnavailable as exc:
        return str(exc)
    return None


def build_side(side: dict[str, Any], in_channels: int, num_classes: int, spatial_dims: int) -> nn.Module:
    """Build one side of a case, ``{"builder": NAME, "kwargs": {...}}``, in training mode.

    ``"channels_last": true`` in the side converts the built model's weights to ``channels_last`` (2D) or
    ``channels_last_3d`` (3D): PyTorch's CPU convolutions then run channels-last from the first layer on, as a peer's
    user opts in with ``model.to(memory_format=...)`` (timm's ``--channels-last``).

    Raises:
        ConfigError: unknown builder name.
        PeerUnavailable: the peer library does not import.
    """
    look_up(side["builder"], BUILDERS, what="benchmark model builder", key="builder")
    model = BUILDERS[side["builder"]](in_channels, num_classes, spatial_dims, **dict(side.get("kwargs") or {}))
    if side.get("channels_last"):
        model = model.to(memory_format=torch.channels_last if spatial_dims == 2 else torch.channels_last_3d)
    return model.train()
