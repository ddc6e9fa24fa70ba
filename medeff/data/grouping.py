"""Groups of images that must stay on one side of a split, for data sets without patient identifiers.

Public 2D slice collections often publish neighbouring slices of one patient as separate files, sometimes the very
same file twice, and no patient id. A split by image then puts near-copies of a test image into training. Here
images are joined into groups when

* their voxels are identical (:func:`medeff.data.leakage.array_hash`), or
* they are near-identical by the leakage guard's own test (:func:`medeff.data.leakage.near_identical_pairs`:
  thumbnail correlation at or above a threshold, confirmed on a finer thumbnail), or
* the source already gives them one group (e.g. a patient id),

and the relation is closed transitively (union-find): if A~B and B~C, then A, B and C form one group even when A
and C differ. A split that keeps these groups whole therefore has no pair across its sides that the leakage guard
(``medeff index``) would report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from medeff.data.leakage import near_identical_pairs

__all__ = ["UnionFind", "similarity_groups", "group_summary"]


class UnionFind:
    """Disjoint sets over ``0..n-1`` (path halving, union by size)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def labels(self) -> list[int]:
        """Group number per element: groups numbered 0.. in order of their first element."""
        first: dict[int, int] = {}
        out = []
        for i in range(len(self.parent)):
            r = self.find(i)
            out.append(first.setdefault(r, len(first)))
        return out


def similarity_groups(
    hashes: Sequence[str],
    thumbs: Sequence[np.ndarray | None],
    confirm: Sequence[np.ndarray | None] | None = None,
    *,
    threshold: float = 0.98,
    source_groups: Sequence[str] | None = None,
) -> list[int]:
    """Group number per case: identical hashes, near-identical images and shared source groups, joined transitively.

    Args:
        hashes: :func:`medeff.data.leakage.array_hash` per case.
        thumbs: candidate thumbnails (:func:`medeff.data.leakage.thumbnail`), None for a case without one.
        confirm: confirming thumbnails, or None.
        threshold: the leakage guard's ``near_threshold``.
        source_groups: group key per case given by the source (cases sharing one are joined), or None.

    Returns:
        Group number per case, numbered 0.. in order of first appearance.
    """
    n = len(hashes)
    uf = UnionFind(n)
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        uf.union(first.setdefault(h, i), i)
    if source_groups is not None:
        first = {}
        for i, g in enumerate(source_groups):
            uf.union(first.setdefault(str(g), i), i)
    a, b, _ = near_identical_pairs(thumbs, confirm, threshold=threshold)
    for i, j in zip(a.tolist(), b.tolist()):
        uf.union(i, j)
    return uf.labels()


def group_summary(groups: Sequence[Any], classes: Sequence[int] | None = None) -> dict[str, Any]:
    """Counts that describe a grouping: number of groups, size distribution, groups mixing classes.

    Returns:
        ``{"n_cases", "n_groups", "n_singletons", "largest", "median_size", "size_counts": {size: n_groups},
        "mixed_class_groups"}`` (the last only with ``classes``).
    """
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    sizes = [len(m) for m in members.values()]
    out: dict[str, Any] = {
        "n_cases": len(groups),
        "n_groups": len(members),
        "n_singletons": sum(1 for s in sizes if s == 1),
        "largest": max(sizes, default=0),
        "median_size": float(np.median(sizes)) if sizes else 0.0,
        "size_counts": {str(k): v for k, v in sorted(Counter(sizes).items())},
    }
    if classes is not None:
        out["mixed_class_groups"] = sum(1 for m in members.values() if len({int(classes[i]) for i in m}) > 1)
    return out
