"""On-disk cache of preprocessed volumes (``data.cache_dir``): decode and resample once, then memory-map.

The deterministic half of the training and validation transforms (read, reorient, resample, intensity window,
crops; :func:`medeff.data.transforms.preprocessing_transforms`) is wrapped in :class:`DiskCached`. For each case
it computes a key from

* the input files: absolute path, size and modification time (``st_mtime_ns``) of every file the case reads (the
  image file(s), the label map, every file of a DICOM folder), and
* the preprocessing: the ``data.preprocessing`` spec (without ``normalize``, which runs after the cache), the
  spatial dimensions, the patch size, whether a label map is read, MONAI's version and :data:`CACHE_VERSION`.

A hit reads ``<cache_dir>/<key>/{image,label}.npy`` memory-mapped (copy-on-write: later in-place transforms never
touch the file); a miss runs the preprocessing and stores its arrays. Changing an input file or any preprocessing
setting changes the key, so a stale entry is never used (old entries stay on disk until the folder is cleared).

Each array file is written atomically (:func:`medeff.utils.atomic.atomic_path`), then ``entry.json`` (shape,
dtype, BLAKE2b digest and affine per array), so an entry exists only once it is complete. The first time a process
reads an entry it checks every array against ``entry.json``; a damaged entry (truncated or altered file, unreadable
JSON) is logged as a warning and rebuilt from the inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Transform

from medeff.errors import ConfigError
from medeff.utils.atomic import atomic_path, write_json_atomic
from medeff.utils.logging import get_logger

__all__ = ["CACHE_VERSION", "DiskCached", "input_files", "cache_key", "preprocessing_fingerprint"]

log = get_logger(__name__)

#: Bumped whenever medeff's preprocessing code changes what it produces for the same settings.
CACHE_VERSION = 1
_CHUNK = 1 << 22


def input_files(value: Any) -> list[str]:
    """Every file behind a record value: a path, a list of paths (channels) or a folder (DICOM series)."""
    paths = value if isinstance(value, (list, tuple)) else [value]
    files: list[str] = []
    for p in paths:
        p = os.path.abspath(os.fspath(p))
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names)]
        else:
            files.append(p)
    return files


def preprocessing_fingerprint(spec: Mapping[str, Any] | None, *, spatial_dims: int, has_label: bool,
                              patch_size: Sequence[int] | None) -> str:
    """JSON text of everything, besides the input files, that decides what the preprocessing produces."""
    import monai

    settings = {k: v for k, v in dict(spec or {}).items() if k != "normalize"}
    return json.dumps({"version": CACHE_VERSION, "monai": monai.__version__, "preprocessing": settings,
                       "spatial_dims": int(spatial_dims), "has_label": bool(has_label),
                       "patch_size": [int(v) for v in patch_size] if patch_size else None},
                      sort_keys=True, default=str)


def cache_key(record: Mapping[Hashable, Any], keys: Sequence[str], fingerprint: str) -> str | None:
    """The cache key of a record (hex), or None when a key holds an in-memory array instead of file paths.

    Raises:
        OSError: an input file is missing or cannot be examined (:class:`DiskCached` then runs the reader, whose
            error names the file).
    """
    h = hashlib.sha256(fingerprint.encode())
    for key in keys:
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, (np.ndarray, torch.Tensor)):
            return None
        for f in input_files(value):
            st = os.stat(f)
            h.update(json.dumps([key, f, st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()[:40]


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class DiskCached(Transform):
    """Run ``transform`` (the deterministic preprocessing) through the on-disk cache in ``cache_dir``.

    Args:
        transform: the deterministic preprocessing (reads the files named by the record).
        cache_dir: folder of the cache (created when missing).
        keys: record keys whose arrays are cached (``image``, and ``label`` for segmentation).
        fingerprint: :func:`preprocessing_fingerprint` of the preprocessing settings.
        on_build: called with the key after every miss (counts, tests).

    Raises:
        ConfigError: ``cache_dir`` cannot be created.
    """

    def __init__(self, transform: Callable, cache_dir: str | os.PathLike, keys: Sequence[str], fingerprint: str,
                 on_build: Callable[[str], None] | None = None) -> None:
        self.transform, self.keys, self.fingerprint, self.on_build = transform, list(keys), fingerprint, on_build
        self.cache_dir = Path(cache_dir)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"data.cache_dir '{cache_dir}' cannot be created: {exc}.",
                              hint="point data.cache_dir at a writable folder, or set it to null.") from exc
        self._verified: set[str] = set()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __getstate__(self) -> dict[str, Any]:  # worker processes started with spawn get a fresh lock
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        try:
            key = cache_key(data, self.keys, self.fingerprint)
        except OSError:  # a missing or unreadable input: the reader raises medeff's error naming the file
            key = None
        if key is None:
            return self.transform(data)
        entry = self.cache_dir / key
        loaded = self._load(entry, key, data)
        if loaded is not None:
            self.hits += 1
            return loaded
        out = self.transform(data)
        self.misses += 1
        self._store(entry, out)
        if self.on_build is not None:
            self.on_build(key)
        return out

    # ---- reading ------------------------------------------------------------------------------------------------
    def _load(self, entry: Path, key: str, data: Mapping[Hashable, Any]) -> dict[Hashable, Any] | None:
        meta_path = entry / "entry.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            arrays = meta["arrays"]
            with self._lock:
                verify = key not in self._verified
            out = dict(data)
            for k in self.keys:
                if data.get(k) is None:
                    continue
                info = arrays[k]
                path = entry / f"{k}.npy"
                if verify and _digest(path) != info["digest"]:
                    raise ValueError(f"{k}.npy does not match its digest")
                arr = np.load(path, mmap_mode="c", allow_pickle=False)
                if list(arr.shape) != info["shape"] or str(arr.dtype) != info["dtype"]:
                    raise ValueError(f"{k}.npy holds {arr.dtype}{list(arr.shape)}, the entry says "
                                     f"{info['dtype']}{info['shape']}")
                out[k] = MetaTensor(torch.from_numpy(arr), affine=torch.tensor(info["affine"], dtype=torch.float64))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("Preprocessing cache entry %s (case %s) is damaged (%s); rebuilding it from the input files.",
                        entry, data.get("case_id", "-"), exc)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        with self._lock:
            self._verified.add(key)
        return out

    # ---- writing ------------------------------------------------------------------------------------------------
    def _store(self, entry: Path, out: Mapping[Hashable, Any]) -> None:
        arrays: dict[str, Any] = {}
        try:
            entry.mkdir(parents=True, exist_ok=True)
            for k in self.keys:
                value = out.get(k)
                if value is None:
                    continue
                arr = np.ascontiguousarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor)
                                           else np.asarray(value))
                affine = value.affine if isinstance(value, MetaTensor) else torch.eye(4, dtype=torch.float64)
                with atomic_path(entry / f"{k}.npy", suffix=".npy") as tmp:
                    np.save(tmp, arr, allow_pickle=False)
                arrays[k] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "digest": _digest(entry / f"{k}.npy"),
                             "affine": np.asarray(affine, dtype=np.float64).tolist()}
            write_json_atomic(entry / "entry.json", {"cache_version": CACHE_VERSION, "arrays": arrays})
        except OSError as exc:  # a full disk costs speed, not the run
            log.warning("Preprocessing cache: could not write %s (%s); the case is preprocessed again next time.",
                        entry, exc)
        with self._lock:
            self._verified.add(entry.name)
