"""Policy for reading DICOM series: tolerances and what to do with gaps, tilt and duplicates.

Defaults live in ``conf/io/dicom.yaml``; :meth:`DicomReadOptions.from_config` reads them and applies
per-call overrides. Every choice is checked against its valid values with a "did you mean" error.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from medeff.errors import ConfigError
from medeff.utils.options import look_up

__all__ = ["DicomReadOptions", "ON_GAP", "ON_TILT", "ON_DUPLICATE"]

ON_GAP = ("error", "interpolate")
ON_TILT = ("resample", "error")
ON_DUPLICATE = ("drop_identical", "error")


@dataclass(frozen=True)
class DicomReadOptions:
    """How strictly a DICOM series is checked and which repairs are allowed.

    Attributes:
        spacing_rtol: a slice step may differ from the median step by this fraction of it ...
        spacing_atol_mm: ... or by this many mm, whichever is larger.
        on_gap: ``"error"`` refuses irregular slice steps; ``"interpolate"`` resamples onto a uniform grid.
        max_interpolated_slices: with ``on_gap="interpolate"``, a single gap needing more new slices is still refused.
        on_tilt: ``"resample"`` shifts the slices of a gantry-tilted series onto an orthogonal grid; ``"error"``.
        tilt_tolerance_deg: tilt angles below this are treated as rounding noise.
        inplane_tolerance_mm: slice origins may deviate this far (in-plane) from the straight line through them.
        on_duplicate: ``"drop_identical"`` keeps one of several byte-identical slices at one position; ``"error"``.
        orientation_tolerance: tolerance for unit length / orthogonality of the direction cosines.
        fill_value: value given to voxels outside the source data after a resampling repair.
    """

    spacing_rtol: float = 0.01
    spacing_atol_mm: float = 0.01
    on_gap: str = "error"
    max_interpolated_slices: int = 4
    on_tilt: str = "resample"
    tilt_tolerance_deg: float = 0.05
    inplane_tolerance_mm: float = 0.05
    on_duplicate: str = "drop_identical"
    orientation_tolerance: float = 1e-3
    fill_value: float = -1024.0

    def __post_init__(self) -> None:
        look_up(self.on_gap, ON_GAP, what="on_gap policy", key="io.dicom.on_gap")
        look_up(self.on_tilt, ON_TILT, what="on_tilt policy", key="io.dicom.on_tilt")
        look_up(self.on_duplicate, ON_DUPLICATE, what="on_duplicate policy", key="io.dicom.on_duplicate")
        for name in ("spacing_rtol", "spacing_atol_mm", "tilt_tolerance_deg", "orientation_tolerance",
                     "inplane_tolerance_mm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"io.dicom.{name} must be a number >= 0, got {value!r}.")

    @classmethod
    def from_config(cls, **overrides: Any) -> DicomReadOptions:
        """Defaults from ``conf/io/dicom.yaml`` with ``overrides`` applied (``None`` values are ignored).

        Raises:
            ConfigError: an unknown key or an invalid value.
        """
        values = dict(_config_defaults())
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls._build(values)

    def replace(self, **changes: Any) -> DicomReadOptions:
        """Return a copy with ``changes`` applied (``None`` values are ignored)."""
        values = dataclasses.asdict(self)
        values.update({k: v for k, v in changes.items() if v is not None})
        return self._build(values)

    @classmethod
    def _build(cls, values: dict[str, Any]) -> DicomReadOptions:
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            look_up(key, names, what="DICOM read option", key=f"io.dicom.{key}")
        return cls(**values)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all options (the keys of ``conf/io/dicom.yaml``)."""
        return tuple(f.name for f in dataclasses.fields(cls))


@functools.lru_cache(maxsize=1)
def _config_defaults() -> dict[str, Any]:
    import yaml

    from medeff.config import conf_dir

    path = conf_dir() / "io" / "dicom.yaml"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of DICOM read options, got {type(data).__name__}.")
    return data
