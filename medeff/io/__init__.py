"""Image I/O: readers return :class:`ImageData` (array + geometry), writers keep that geometry.

Public API: :func:`read_image`, :func:`write_image`, :func:`find_series`, :func:`read_dicom_series`,
:class:`DicomSeriesInfo`, :class:`DicomReadOptions`, :class:`ImageData`.
"""

from medeff.io.api import image_format, read_image, write_image
from medeff.io.base import ImageData
from medeff.io.dicom import read_dicom_series, select_series
from medeff.io.dicom_scan import DicomSeriesInfo, find_series
from medeff.io.options import DicomReadOptions

__all__ = [
    "ImageData",
    "read_image",
    "write_image",
    "image_format",
    "find_series",
    "read_dicom_series",
    "select_series",
    "DicomSeriesInfo",
    "DicomReadOptions",
]
