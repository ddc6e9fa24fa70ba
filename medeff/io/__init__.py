"""Image I/O: readers return :class:`ImageData` (array + geometry), writers keep that geometry."""

from medeff.io.base import ImageData

__all__ = ["ImageData"]
