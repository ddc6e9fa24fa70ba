"""Train / validation / test splits: stratified by class, grouped (no group on two sides) or image by image.

``grouped_split`` keeps every group (patient, or near-duplicate group from :mod:`medeff.data.grouping`) on one side;
``random_split`` is the same with every case its own group, i.e. the image-level split of many published results.
``split_leakage`` measures what a split lets through: the test cases with an identical or near-identical training
case by the leakage guard's test.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medeff.data.leakage import near_identical_pairs
from medeff.errors import ConfigError

__all__ = ["SPLITS", "check_fractions", "grouped_split", "random_split", "split_leakage"]

SPLITS = ("train", "val", "test")


def check_fractions(fractions: Mapping[str, float], key: str = "fractions") -> dict[str, float]:
    """``{"train", "val", "test"}`` fractions, each in [0, 1], summing to 1 (train > 0).

    Raises:
        ConfigError: a missing or unknown split, a negative value, or a sum other than 1.
    """
    got = {str(k): float(v) for k, v in dict(fractions).items()}
    if set(got) != set(SPLITS):
        raise ConfigError(f"{key} must give exactly train, val and test, got {sorted(got)}.",
                          hint=f"e.g. {key}={{train: 0.8, val: 0.1, test: 0.1}}.")
    if any(v < 0 or v > 1 for v in got.values()) or got["train"] <= 0 or abs(sum(got.values()) - 1.0) > 1e-6:
        raise ConfigError(f"{key} {got} must lie in [0, 1], with train > 0, and sum to 1.",
                          hint=f"e.g. {key}={{train: 0.8, val: 0.1, test: 0.1}}.")
    return got


def grouped_split(groups: Sequence[Any], classes: Sequence[int] | None, fractions: Mapping[str, float], *,
                  seed: int = 0, stratify: bool = True) -> list[str]:
    """``"train"``/``"val"``/``"test"`` per case so that no group lies on two sides.

    Groups are ordered by key, shuffled with ``seed`` and placed largest first, each on the side whose class counts
    fall furthest short of their target (``fraction x class count``), relative to that target, weighted by the
    classes the group carries. So the class mix of every side follows the whole set as closely as the groups
    allow, and the result depends only on the (group, class) pairs and the seed.

    Args:
        groups: group key per case.
        classes: class index per case (None: no stratification).
        fractions: ``{"train": .., "val": .., "test": ..}`` summing to 1 (see :func:`check_fractions`).
        seed: shuffle seed.
        stratify: balance classes across sides (needs ``classes``).

    Raises:
        ConfigError: bad fractions, or fewer groups than non-empty sides.
    """
    frac = check_fractions(fractions)
    sides = [s for s in SPLITS if frac[s] > 0]
    members: dict[Any, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    if len(members) < len(sides):
        raise ConfigError(f"A split into {sides} needs at least {len(sides)} groups; the data hold {len(members)}.",
                          hint="add cases from other patients, or set the fraction of a side to 0.")
    use = stratify and classes is not None and len(classes) > 0
    n_cls = int(max(classes)) + 1 if use else 1
    keys = sorted(members, key=str)
    keys = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    counts = {g: np.bincount([int(classes[i]) if use else 0 for i in members[g]], minlength=n_cls) for g in keys}
    keys.sort(key=lambda g: -int(counts[g].sum()))  # stable: ties keep the seeded order
    total = np.sum([counts[g] for g in keys], axis=0).astype(np.float64)
    target = np.stack([frac[s] * total for s in sides])  # [side, class]
    filled = np.zeros_like(target)
    side_of: dict[Any, int] = {}
    for g in keys:
        c = counts[g]
        score = ((filled - target) / np.maximum(target, 1.0)) @ c
        best = np.flatnonzero(np.isclose(score, score.min()))
        pick = int(best[np.argmin((filled[best].sum(1) - target[best].sum(1)) / np.maximum(target[best].sum(1), 1))])
        side_of[g] = pick
        filled[pick] += c
    return [sides[side_of[g]] for g in groups]


def random_split(classes: Sequence[int] | None, fractions: Mapping[str, float], *, seed: int = 0,
                 stratify: bool = True) -> list[str]:
    """Image-level split: :func:`grouped_split` with every case its own group (stratified by class)."""
    n = len(classes) if classes is not None else 0
    return grouped_split(list(range(n)), classes, fractions, seed=seed, stratify=stratify)


def split_leakage(splits: Sequence[str], hashes: Sequence[str], thumbs: Sequence[np.ndarray | None],
                  confirm: Sequence[np.ndarray | None] | None = None, *, threshold: float = 0.98,
                  test: str = "test", train: str = "train", max_examples: int = 10) -> dict[str, Any]:
    """Test cases that have an identical or near-identical training case (the leakage guard's test).

    Returns:
        ``{"n_test", "n_leaked", "fraction_leaked", "n_identical", "threshold", "examples": [[test_pos,
        train_pos, r], ...]}``: ``n_leaked`` counts test cases with at least one identical or near-identical
        training case (``n_identical``: with an identical one); ``examples`` holds the most similar pair of up to
        ``max_examples`` leaked test cases (positions in the input, ``r`` = 1.0 for identical voxels).
    """
    side = np.asarray([str(s) for s in splits])
    keep = (side == test) | (side == train)
    test_pos = np.flatnonzero(side == test)
    best: dict[int, tuple[int, float]] = {}
    train_by_hash: dict[str, int] = {}
    for i in np.flatnonzero(side == train):
        train_by_hash.setdefault(hashes[i], int(i))
    identical = set()
    for i in test_pos:
        j = train_by_hash.get(hashes[i])
        if j is not None:
            identical.add(int(i))
            best[int(i)] = (j, 1.0)
    masked = [t if k else None for t, k in zip(thumbs, keep)]
    a, b, r = near_identical_pairs(masked, confirm, threshold=threshold, apart=side)
    for i, j, c in zip(a.tolist(), b.tolist(), r.tolist()):
        t, o = (i, j) if side[i] == test else (j, i)
        if t not in best or c > best[t][1]:
            best[t] = (o, float(c))
    order = sorted(best, key=lambda t: (-best[t][1], t))
    n_test = int(test_pos.size)
    return {
        "threshold": float(threshold),
        "n_test": n_test,
        "n_leaked": len(best),
        "fraction_leaked": len(best) / n_test if n_test else 0.0,
        "n_identical": len(identical),
        "examples": [[t, best[t][0], round(best[t][1], 4)] for t in order[:max_examples]],
    }
