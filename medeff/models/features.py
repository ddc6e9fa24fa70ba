"""Feature metadata recorded while an encoder is built (channels, per-axis reduction, module name)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["FeatureInfo", "FeatureSpec"]


@dataclass(frozen=True)
class FeatureSpec:
    """One feature map an encoder can return.

    Attributes:
        module: dotted name of the module whose output this is (``"act1"`` for the stem, ``"blocks.3"``).
        channels: number of channels.
        reduction: per-axis downsampling factor relative to the input (a tuple: strides can be anisotropic).
        stage: stage index (-1 for the stem).
        level: resolution level (0 = stem level; +1 at each downsampling stage).
    """

    module: str
    channels: int
    reduction: tuple[int, ...]
    stage: int
    level: int


class FeatureInfo(Sequence[FeatureSpec]):
    """An ordered, read-only list of :class:`FeatureSpec` with convenience accessors.

    Args:
        specs: the feature specs, shallow to deep.
    """

    def __init__(self, specs: Sequence[FeatureSpec]) -> None:
        self._specs = tuple(specs)

    def __getitem__(self, index):  # type: ignore[override]  # noqa: D105
        return self._specs[index]

    def __len__(self) -> int:  # noqa: D105
        return len(self._specs)

    def __iter__(self) -> Iterator[FeatureSpec]:  # noqa: D105
        return iter(self._specs)

    def __repr__(self) -> str:  # noqa: D105
        return f"FeatureInfo({list(self._specs)!r})"

    def channels(self) -> list[int]:
        """Channels per feature."""
        return [s.channels for s in self._specs]

    def reduction(self) -> list[tuple[int, ...]]:
        """Per-axis reduction per feature."""
        return [s.reduction for s in self._specs]

    def module_names(self) -> list[str]:
        """Module name per feature."""
        return [s.module for s in self._specs]

    def select(self, indices: Sequence[int]) -> FeatureInfo:
        """A new :class:`FeatureInfo` with the entries at ``indices``.

        Raises:
            ValueError: an index out of range.
        """
        bad = [i for i in indices if not -len(self) <= i < len(self)]
        if bad:
            raise ValueError(f"feature indices {bad} out of range; this encoder has {len(self)} features "
                             f"({', '.join(self.module_names())}).")
        return FeatureInfo([self._specs[i] for i in indices])
