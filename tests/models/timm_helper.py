"""Test-only helper: import timm (the 2D numerical reference) without torchvision.

timm imports torchvision at import time; where torchvision cannot be installed beside the CPU torch build,
a meta-path finder answers every ``torchvision*`` import with a MagicMock module. Never used by medeff itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from unittest import mock

__all__ = ["import_timm"]


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
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
    """Import timm, stubbing torchvision when the real one does not import."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        if not any(isinstance(f, _TorchvisionStub) for f in sys.meta_path):
            sys.meta_path.insert(0, _TorchvisionStub())
    import timm

    return timm
