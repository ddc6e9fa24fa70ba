"""timm as the numerical reference of the weight tests: the same import as ``medeff bench`` (torchvision stubbed
where it does not import beside the CPU torch build). A missing timm fails these tests, it does not skip them."""

from __future__ import annotations

from medeff.benchmarks.peers import import_timm

__all__ = ["import_timm"]
