"""Patient-level cross-validation folds: seeded, optionally stratified by class, never splitting a group.

Folds are drawn once by the indexer and written into the index; training code reads them back.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from medeff.errors import ConfigError

__all__ = ["assign_folds", "split_groups", "class_balance"]


def assign_folds(
    groups: Sequence[str],
    classes: Sequence[int] | None = None,
    *,
    k: int = 5,
    seed: int = 0,
    stratify: bool = True,
) -> list[int]:
    """Give every case a fold in ``0..k-1`` so that all cases of one group share a fold.

    Groups are ordered by their key and then shuffled with ``seed``, so the result depends only on the
    (group, class) pairs and the seed, not on input order. With ``classes`` and ``stratify`` the class mix
    of each fold follows the whole set as closely as grouping allows (greedy assignment of groups, largest
    first, to the fold whose class counts fall shortest of their target); otherwise folds get equal case counts.

    Args:
        groups: group (patient) key per case.
        classes: class index per case, or None.
        k: number of folds (>= 2).
        seed: random seed for the shuffle.
        stratify: balance class counts across folds (needs ``classes``).

    Returns:
        Fold index per case, in input order.

    Raises:
        ConfigError: ``k`` < 2 or more folds than groups.
    """
    n_groups = len(set(groups))
    if k < 2:
        raise ConfigError(f"folds.k must be at least 2, got {k}.",
                          hint="set folds.k=5 (the default) or another k >= 2.")
    if n_groups < k:
        raise ConfigError(
            f"folds.k={k} but the data hold only {n_groups} patient group(s); a fold would be empty.",
            hint=f"set folds.k to at most {n_groups}, or add cases." if n_groups >= 2
            else "cross-validation folds need at least 2 patient groups; add cases from other patients.",
        )
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    keys = sorted(members)
    order = rng.permutation(len(keys))
    keys = [keys[i] for i in order]
    use_classes = stratify and classes is not None
    n_cls = (max(classes) + 1) if use_classes and len(classes) else 1
    counts = {g: np.zeros(n_cls, dtype=np.int64) for g in keys}
    for g in keys:
        for i in members[g]:
            counts[g][classes[i] if use_classes else 0] += 1
    # largest groups first (stable after the seeded shuffle, so ties break by seed)
    keys.sort(key=lambda g: -int(counts[g].sum()))
    total = sum(counts.values())
    target = total / k
    fold_counts = np.zeros((k, n_cls), dtype=np.float64)
    fold_of: dict[str, int] = {}
    for g in keys:
        c = counts[g]
        if use_classes:
            # fill of each fold relative to its share, weighted by the classes this group carries
            fill = (fold_counts - target) / np.maximum(target, 1.0)
            score = fill @ c
        else:
            score = fold_counts.sum(axis=1)
        cand = np.flatnonzero(np.isclose(score, score.min()))
        best = int(cand[np.argmin(fold_counts[cand].sum(axis=1))])
        fold_of[g] = best
        fold_counts[best] += c
    return [fold_of[g] for g in groups]


def split_groups(groups: Sequence[str], folds: Sequence[int]) -> dict[str, list[int]]:
    """Groups whose cases lie in more than one fold: group -> sorted folds (empty when all is well)."""
    seen: dict[str, set[int]] = defaultdict(set)
    for g, f in zip(groups, folds):
        seen[g].add(int(f))
    return {g: sorted(fs) for g, fs in seen.items() if len(fs) > 1}


def class_balance(classes: Sequence[int], folds: Sequence[int], k: int) -> list[dict[int, int]]:
    """Class counts per fold (for reports and tests)."""
    out = [Counter() for _ in range(k)]
    for c, f in zip(classes, folds):
        out[int(f)][int(c)] += 1
    return [dict(sorted(o.items())) for o in out]
