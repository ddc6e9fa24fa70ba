"""Fixtures for the image I/O tests (synthetic DICOM helpers live in ``dicom_synth.py``)."""

from __future__ import annotations

import pytest
from dicom_synth import make_series


@pytest.fixture()
def series_factory(tmp_path):
    """``series_factory(name, **make_series kwargs)`` -> (folder, stored) under tmp_path."""

    def factory(name: str = "series", **kwargs):
        return make_series(tmp_path / name, **kwargs)

    return factory
