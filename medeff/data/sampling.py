"""Which training items an epoch visits, and in which order.

* :func:`epoch_seed` / :class:`EpochSeededSampler`: the order and the random augmentation of an epoch depend on
  ``(seed, epoch)`` only, so a run resumed from an epoch-end checkpoint repeats the epochs it had not finished.
* :func:`oversampled_indices`: minority-class oversampling (``data.oversample``), the positions one epoch visits
  with the named classes repeated.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from medeff.errors import ConfigError

__all__ = ["epoch_seed", "EpochSeededSampler", "oversampled_indices"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 31-bit seed derived from ``(seed, epoch)`` only (independent streams for different epochs)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0] & 0x7FFFFFFF)


class EpochSeededSampler(Sampler[int]):
    """Random permutation of ``range(n)`` drawn from ``(seed, epoch)``; reseeds the other generators as well.

    Args:
        n: dataset length.
        seed: run seed.
        epoch_fn: returns the epoch about to start (the trainer's ``current_epoch``).
        reseed: called with the epoch seed when an epoch's iterator starts (reseeds the random transforms).
        indices: the dataset positions one epoch visits, repeats allowed (:func:`oversampled_indices`);
            None: each of ``range(n)`` once.
    """

    def __init__(self, n: int, seed: int, epoch_fn: Callable[[], int],
                 reseed: Callable[[int], None] | None = None, indices: Sequence[int] | None = None) -> None:
        self.n, self.seed, self.epoch_fn, self.reseed = int(n), int(seed), epoch_fn, reseed
        # the positions an epoch permutes (an oversampled class appears several times); default range(n)
        self.indices = list(range(self.n)) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        s = epoch_seed(self.seed, int(self.epoch_fn()))
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        if self.reseed is not None:
            self.reseed(s)
        g = torch.Generator()
        g.manual_seed(s)
        yield from (self.indices[i] for i in torch.randperm(len(self.indices), generator=g).tolist())


def oversampled_indices(labels: Sequence[int], repeats: Mapping[Any, Any] | None,
                        class_names: Sequence[str] | None = None) -> list[int]:
    """Dataset positions for one training epoch with minority classes repeated.

    Args:
        labels: the class index of each training item, in dataset order.
        repeats: ``{class: factor}`` (class name or index; integer factor >= 1): each item of that class appears
            ``factor`` times per epoch (with its own random augmentation each time); other classes once.
        class_names: names in index order, to resolve names in ``repeats``.

    Raises:
        ConfigError: an unknown class or a factor that is not an integer >= 1 (names the key ``data.oversample``).
    """
    names = list(class_names or [])
    factor_of: dict[int, int] = {}
    for key, value in (repeats or {}).items():
        if isinstance(key, str) and key in names:
            c = names.index(key)
        elif isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            c = int(key)
        else:
            raise ConfigError(f"data.oversample names class {key!r}, which is not one of {names}.",
                              hint="key each factor by a class name of the index (or its index 0..K-1).")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
            raise ConfigError(f"data.oversample.{key}={value!r} is not a whole number >= 1.",
                              hint="give how many times each image of that class is seen per epoch, e.g. 3.")
        factor_of[c] = int(value)
    out: list[int] = []
    for i, y in enumerate(labels):
        out.extend([i] * factor_of.get(int(y), 1))
    return out
