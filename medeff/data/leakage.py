"""Leakage guard: identical and near-identical images that sit in different folds.

Identical images are found by a hash of the array bytes (with shape and dtype). Near-identical images are found in
two stages: candidate pairs by the Pearson correlation of small thumbnails (block means on a 16-per-axis grid,
z-normalised; one matrix product in blocks, so thousands of cases take well under a second), then each candidate is
confirmed on a finer thumbnail (``confirm`` vectors, e.g. 64x64 in 2D, 32^3 in 3D). The second stage matters: at 16
samples per axis, small bright structures on an empty background (masked nodule crops) all look alike.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["array_hash", "thumbnail", "confirm_size", "near_identical_pairs", "find_leaks"]


def array_hash(arr: np.ndarray) -> str:
    """SHA-1 of shape, dtype and bytes of ``arr`` (C order)."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha1(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def thumbnail(arr: np.ndarray, size: int = 16) -> np.ndarray:
    """A z-normalised thumbnail: block means of ``arr`` on a ``size``-per-axis grid (flattened, float32).

    A constant image gives a zero vector (it correlates with nothing).
    """
    t = np.asarray(arr)
    if t.dtype.kind == "b":
        t = t.astype(np.uint8)
    for axis, n in enumerate(t.shape):  # block means (area averaging), so small structures are not missed
        m = min(size, n)
        edges = np.linspace(0, n, num=m + 1).astype(int)[:-1]
        widths = np.diff(np.append(edges, n)).astype(np.float64)
        shape = [1] * t.ndim
        shape[axis] = m
        # float64 sums: no full-size float copy of the volume, no integer overflow
        t = np.add.reduceat(t, edges, axis=axis, dtype=np.float64) / widths.reshape(shape)
    t = np.nan_to_num(t.ravel().astype(np.float32))
    # pad to a fixed length so images of different shapes can be compared (they rarely match then)
    out = np.zeros(size ** np.ndim(arr), dtype=np.float32)
    out[: t.size] = t
    sd = out.std()
    return (out - out.mean()) / sd if sd > 0 else np.zeros_like(out)


def confirm_size(ndim: int, voxels: int = 32768) -> int:
    """Samples per axis of the confirmation thumbnail: about ``voxels`` values in all (64x64... in 2D, 32^3 in 3D)."""
    return max(8, int(round(voxels ** (1.0 / max(ndim, 1)))))


def near_identical_pairs(
    thumbs: Sequence[np.ndarray | None],
    confirm: Sequence[np.ndarray | None] | None = None,
    *,
    threshold: float = 0.98,
    apart: Sequence[Any] | None = None,
    block: int = 2048,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of near-identical images: thumbnail correlation ``>= threshold``, confirmed on ``confirm``.

    This is the similarity the leakage guard uses; :func:`medeff.data.grouping.similarity_groups` joins the same
    pairs into groups, so a split by those groups has no pair this function (and the guard) would report.

    Args:
        thumbs: :func:`thumbnail` per case (None to skip a case), for the candidate search.
        confirm: finer :func:`thumbnail` per case; a candidate counts only if these correlate at ``threshold`` too
            (None: no confirmation).
        threshold: correlation at or above which two images count as near-identical.
        apart: optional value per case (e.g. the fold): only pairs whose values differ are returned.
        block: rows per block of the correlation matrix.

    Returns:
        ``(i, j, r)``: case positions (``i < j``) and the correlation that decided (the confirming one when given).
    """
    out_a: list[np.ndarray] = []
    out_b: list[np.ndarray] = []
    out_r: list[np.ndarray] = []
    valid = [i for i, t in enumerate(thumbs) if t is not None]
    for length in sorted({thumbs[i].size for i in valid}):
        sel = np.asarray([i for i in valid if thumbs[i].size == length])
        full = np.stack([thumbs[i] for i in sel]).astype(np.float32)
        f = np.asarray([apart[i] for i in sel]) if apart is not None else None
        for start in range(0, len(sel), block):
            r = full[start: start + block] @ full.T / np.float32(length)
            a, b = np.nonzero(r >= threshold)
            a = a + start
            keep = b > a  # each pair once
            if f is not None:
                keep &= f[a] != f[b]  # only across folds / splits
            a, b, corr = a[keep], b[keep], r[a[keep] - start, b[keep]].astype(np.float64)
            if confirm is not None and a.size:
                ok = np.zeros(a.size, dtype=bool)
                for n, (ia, ib) in enumerate(zip(sel[a], sel[b])):
                    ca, cb = confirm[ia], confirm[ib]
                    if ca is not None and cb is not None and ca.size == cb.size:
                        corr[n] = float(np.dot(ca, cb)) / ca.size
                        ok[n] = corr[n] >= threshold
                a, b, corr = a[ok], b[ok], corr[ok]
            out_a.append(sel[a])
            out_b.append(sel[b])
            out_r.append(corr)
    if not out_a:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(out_a).astype(np.int64), np.concatenate(out_b).astype(np.int64), np.concatenate(out_r)


def find_leaks(
    case_ids: Sequence[str],
    folds: Sequence[int],
    hashes: Sequence[str],
    thumbs: Sequence[np.ndarray | None],
    confirm: Sequence[np.ndarray | None] | None = None,
    *,
    threshold: float = 0.98,
    block: int = 2048,
    max_pairs: int = 1000,
) -> dict[str, Any]:
    """Pairs of cases in *different* folds whose images are identical or near-identical.

    Args:
        case_ids: case ids.
        folds: fold per case.
        hashes: :func:`array_hash` per case.
        thumbs: :func:`thumbnail` per case (None to skip a case), for the candidate search.
        confirm: finer :func:`thumbnail` per case; a candidate counts only if these correlate at ``threshold`` too
            (None: no confirmation).
        threshold: thumbnail correlation at or above which two images count as near-identical.
        block: rows per block of the correlation matrix.
        max_pairs: keep at most this many near-identical pairs (the count is always exact).

    Returns:
        ``{"identical": [[id_a, id_b], ...], "near_identical": [[id_a, id_b, r], ...], "n_identical": int,
        "n_near_identical": int, "threshold": threshold}``.
    """
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        by_hash[h].append(i)
    identical = []
    for idx in by_hash.values():
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                i, j = idx[a], idx[b]
                if folds[i] != folds[j]:
                    identical.append([case_ids[i], case_ids[j]])
    ident_set = {tuple(p) for p in identical}
    near: list[list[Any]] = []
    n_near = 0
    for ia, ib, c in zip(*near_identical_pairs(thumbs, confirm, threshold=threshold, apart=folds, block=block)):
        pair = (case_ids[ia], case_ids[ib])
        if pair in ident_set or pair[::-1] in ident_set:
            continue
        n_near += 1
        if len(near) < max_pairs:
            near.append([pair[0], pair[1], round(float(c), 4)])
    return {
        "threshold": threshold,
        "n_identical": len(identical),
        "n_near_identical": n_near,
        "identical": identical,
        "near_identical": near,
    }
