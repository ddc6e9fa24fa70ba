"""Dataset index -> MONAI datasets -> Lightning data loaders.

Two kinds of data, chosen by ``data.kind``:

* ``volume``: one image file (or DICOM folder) per case, optionally a label map (segmentation) and/or a class.
  Records go through :func:`medeff.data.transforms.train_transforms` in a :class:`monai.data.CacheDataset`:
  the deterministic part is computed once, so epochs after the first read nothing from disk.
* ``archive``: 2D slices stored as rows of an ``.npz`` archive (LIDC-style nodule slices). One training item per
  row; with ``context_slices = n`` the ``n`` neighbouring rows of the same case on each side are stacked as
  channels (2.5D; edges repeat the last slice). The arrays are read once into memory.

Splits come from the folds written in the index (``fold`` is the validation fold); nothing is re-drawn here.

With ``seed`` set, every training epoch is seeded from ``(seed, epoch)`` alone (:class:`medeff.data.sampling.EpochSeededSampler`): the
shuffle order, the state of every MONAI random transform and the global torch / NumPy / ``random`` generators
(dropout, drop-path) are reseeded when the epoch's iterator starts. A run resumed from an epoch-end checkpoint
then sees exactly the data of the uninterrupted run (with ``num_workers=0`` or non-persistent workers, whose
transform copies are taken at each epoch start).

Throughput options (docs/data.md): ``cache_dir`` keeps the preprocessed volumes on disk, memory-mapped, keyed by the
input files and the preprocessing settings (:mod:`medeff.data.cache`), so no later epoch or later run decodes or
resamples them again; ``batch_augmentation`` applies the 2D augmentation to whole batches on the model's device
(:mod:`medeff.data.batch_augment`) instead of image by image in the loader; ``num_workers: auto`` starts one loader
process per usable core but one (cgroup and affinity aware; 0 on a single core).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose
from torch.utils.data import SubsetRandomSampler

from medeff.data.sampling import EpochSeededSampler, epoch_seed, oversampled_indices  # noqa: F401 (re-exported)
from medeff.data.soft_labels import SOFT_LABEL_KEY, attach_soft_labels, check_soft_label_spec
from medeff.data.transforms import (eval_transforms, hu_windows_spec, normalization_spec,
                                    preprocessing_transforms, train_transforms)
from medeff.errors import ConfigError, IndexValidationError
from medeff.io.base import require_finite
from medeff.utils.logging import get_logger

__all__ = ["MedeffDataModule", "load_dataset_index", "archive_items", "KINDS", "EpochSeededSampler", "epoch_seed",
           "resolve_num_workers", "usable_cpus", "oversampled_indices"]

log = get_logger(__name__)
KINDS = ("volume", "archive")
TASKS = ("classification", "segmentation", "joint")


def resolve_num_workers(value: int | str) -> int:
    """``data.num_workers``: a count, or ``auto`` = the cores this process may use minus one (0 on one core).

    Raises:
        ConfigError: neither a non-negative integer nor ``auto``.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return max(usable_cpus() - 1, 0)
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise ConfigError(f"data.num_workers must be a count >= 0 or auto, got {value!r}.",
                          hint="e.g. data.num_workers=auto (one loader process per core but one) or 0.")
    return n


def usable_cpus() -> int:
    """Cores this process may use: its CPU affinity capped by a cgroup CPU quota
    (:func:`medeff.utils.threads.available_cores`)."""
    from medeff.utils.threads import available_cores

    return available_cores()


def load_dataset_index(path: str | Path):
    """Load a dataset index (``medeff.data.load_index`` when present, else the JSON contract directly).

    Raises:
        IndexValidationError: the file is missing or not a medeff index.
    """
    path = Path(path)
    try:
        from medeff.data import load_index  # type: ignore[attr-defined]
    except ImportError:
        load_index = None
    if load_index is not None:
        return load_index(path)
    from medeff.data.index_types import DatasetIndex

    if not path.is_file():
        raise IndexValidationError(f"Dataset index '{path}' does not exist.",
                                   hint="create it with `medeff index`, then set data.index to its path.",
                                   path=str(path))
    with open(path, encoding="utf-8") as fh:
        return DatasetIndex.from_json(json.load(fh), path=str(path))


def archive_items(records: Sequence[Mapping[str, Any]], *, context_slices: int = 0,
                  class_key: str = "label") -> list[dict[str, Any]]:
    """Expand archive case records into one item per row, with ``2*context_slices+1`` channels.

    Args:
        records: index records with ``image`` (npz path), ``archive_key`` and ``rows`` (slice order).
        context_slices: neighbouring rows on each side stacked as channels (0 = plain 2D).
        class_key: record key of the class index (absent for unlabelled data).

    Returns:
        Dictionaries with ``image`` (uint8/float array ``(C, H, W)``), ``label`` (class, when known),
        ``case_id``, ``row`` and ``slice`` (position within the case).

    Raises:
        NonFiniteImageError: a case's rows hold NaN or inf (checked before any windowing).
        IndexValidationError: the array is not ``(rows, H, W)``.
    """
    from medeff.data.index_images import load_archive_array

    items: list[dict[str, Any]] = []
    for rec in records:
        arr = load_archive_array(rec["image"], rec.get("archive_key", "images"))
        rows = [int(r) for r in rec["rows"]]
        if arr.ndim != 3:
            raise IndexValidationError(f"Archive '{rec['image']}' array '{rec.get('archive_key')}' has shape "
                                       f"{arr.shape}; 2D slices need (rows, H, W).",
                                       hint="store one 2D slice per row.", path=str(rec["image"]))
        if arr.dtype.kind in "fc":  # integer slices cannot hold NaN/inf: no copy, no pass
            require_finite(arr[rows], rec["image"], name=f"Archive '{rec['image']}' (array "
                           f"'{rec.get('archive_key', 'images')}', case '{rec['case_id']}', rows {rows[:5]})")
        for pos, row in enumerate(rows):
            picks = [rows[min(max(pos + o, 0), len(rows) - 1)] for o in range(-context_slices, context_slices + 1)]
            item = {"image": np.ascontiguousarray(arr[picks]), "case_id": str(rec["case_id"]), "row": row,
                    "slice": pos}
            if rec.get(class_key) is not None:
                item["label"] = int(rec[class_key])
            if rec.get(SOFT_LABEL_KEY) is not None:
                item[SOFT_LABEL_KEY] = float(rec[SOFT_LABEL_KEY])
            items.append(item)
    return items


class MedeffDataModule(L.LightningDataModule):
    """Lightning data module over a medeff dataset index.

    Args:
        index: path to the dataset index JSON.
        name: short name of this data config (for run names).
        kind: ``volume`` or ``archive`` (see module docstring).
        task: ``classification``, ``segmentation`` or ``joint``.
        spatial_dims: 2 or 3.
        in_channels: channels the model sees (checked against the data; archive: ``2*context_slices+1``).
        num_classes: classes (classification) or labels including background (segmentation).
        class_names: class names in index order (default: the index's).
        label_names: segmentation label names in value order (default: the index's).
        fold: validation fold.
        context_slices: 2.5D neighbours on each side (archive only).
        patch_size: training patch / crop size (segmentation crops, classification crops).
        preprocessing: deterministic preprocessing spec (see :mod:`medeff.data.transforms`).
        augmentation: random augmentation spec (``conf/augmentation``).
        batch_size: training batch size (volumes: cases per batch, each giving ``num_samples`` crops).
        val_batch_size: validation batch size (1 for whole volumes of varying size).
        num_workers: data-loader worker processes, or ``auto``: the usable cores minus one (0 on one core).
        cache_rate: fraction of cases whose preprocessing is cached in memory.
        class_key: record key holding the class for joint segmentation + classification data.
        seed: when set, each training epoch's order and augmentation depend on ``(seed, epoch)`` only
            (exact resume from epoch-end checkpoints); None shuffles from the global generator.
        cache_dir: folder of the on-disk preprocessing cache (volume data); None keeps it off.
        batch_augmentation: augment whole training batches on the model's device (2D classification) instead of
            each image in the loader.
        oversample: ``{class: factor}`` (classification): every training image of that class is drawn ``factor``
            times per epoch (minority-class oversampling, each copy augmented anew); None: each image once.
        soft_label: ``{column, map}``: graded targets of the training cases from a metadata column
            (:mod:`medeff.data.soft_labels`); None: the hard labels.
    """

    def __init__(self, index: str, *, name: str = "data", kind: str = "volume", task: str = "classification",
                 spatial_dims: int = 3, in_channels: int = 1, num_classes: int = 2,
                 class_names: Sequence[str] | None = None, label_names: Sequence[str] | None = None, fold: int = 0,
                 context_slices: int = 0, patch_size: Sequence[int] | None = None,
                 preprocessing: Mapping[str, Any] | None = None, augmentation: Mapping[str, Any] | None = None,
                 batch_size: int = 2, val_batch_size: int = 1, num_workers: int | str = 0, cache_rate: float = 1.0,
                 class_key: str = "meta_class", seed: int | None = None, cache_dir: str | None = None,
                 batch_augmentation: bool = False, oversample: Mapping[Any, Any] | None = None,
                 soft_label: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"Unknown data.kind {kind!r}.", hint=f"use one of {KINDS}.")
        if task not in TASKS:
            raise ConfigError(f"Unknown task kind {task!r} for the data module.", hint=f"use one of {TASKS}.")
        if kind == "archive" and (task != "classification" or spatial_dims != 2):
            raise ConfigError("data.kind=archive holds 2D slices for classification only.",
                              hint="use data.kind=volume for 3D or segmentation data.")
        if kind == "archive" and in_channels != 2 * int(context_slices) + 1:
            raise ConfigError(f"data.in_channels={in_channels} but context_slices={context_slices} gives "
                              f"{2 * int(context_slices) + 1} channels.",
                              hint="set data.in_channels to 2*context_slices+1.")
        if index in (None, "", "???"):
            raise ConfigError("data.index is not set.", hint="pass data.index=PATH/TO/index.json.")
        self.index_path = str(index)
        self.name, self.kind, self.task = name, kind, task
        self.spatial_dims, self.in_channels, self.num_classes = int(spatial_dims), int(in_channels), int(num_classes)
        self.class_names = list(class_names) if class_names else None
        self.label_names = list(label_names) if label_names else None
        self.fold, self.context_slices = int(fold), int(context_slices)
        self.patch_size = list(patch_size) if patch_size else None
        self.preprocessing = dict(preprocessing or {})
        if self.preprocessing.get("channels") == "hu_windows":
            n = len(hu_windows_spec(self.preprocessing.get("hu_windows")))
            if self.in_channels != n:
                raise ConfigError(f"data.preprocessing.channels=hu_windows makes {n} channels (one per window) but "
                                  f"data.in_channels={self.in_channels}.", hint=f"set data.in_channels={n}.")
        self.augmentation = dict(augmentation or {})
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size)
        self.num_workers = resolve_num_workers(num_workers)
        self.cache_rate, self.class_key = float(cache_rate), class_key
        self.seed = None if seed is None else int(seed)
        self.cache_dir = str(cache_dir) if cache_dir not in (None, "") else None
        self.batch_augmentation = bool(batch_augmentation)
        if self.batch_augmentation and (self.task != "classification" or self.spatial_dims != 2):
            raise ConfigError("data.batch_augmentation=true augments 2D classification images; this data is "
                              f"{self.spatial_dims}D {self.task}.", hint="set data.batch_augmentation=false.")
        self.oversample = dict(oversample) if oversample else None
        if self.oversample and self.task != "classification":
            raise ConfigError(f"data.oversample repeats images by class; this data's task is {self.task}.",
                              hint="set data.oversample=null.")
        self.soft_label = check_soft_label_spec(soft_label, self.num_classes, self.task)
        self.batch_augment = None
        self.disk_cache = None
        self._stacked = 0  # deterministic transforms already applied to the archive items in setup()
        self.index = None
        self.train_ds = self.val_ds = None

    # ---- set-up -----------------------------------------------------------------------------------------------
    @property
    def has_label_image(self) -> bool:
        return self.task in ("segmentation", "joint")

    def describe(self) -> dict[str, Any]:
        """Plain-type description of the data contract, stored in checkpoints (class/label maps, preprocessing)."""
        return {"kind": self.kind, "spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "context_slices": self.context_slices,
                "patch_size": list(self.patch_size) if self.patch_size else None,
                "preprocessing": dict(self.preprocessing), "class_names": list(self.class_names or []),
                "label_names": list(self.label_names or [])}

    def use_model_normalization(self, mean: Sequence[float] | None, std: Sequence[float] | None,
                                source: str = "the pretrained model") -> None:
        """Normalise images with the model's ``mean``/``std`` (plain numbers, one per input channel) when
        ``data.preprocessing.normalize`` is ``auto`` (the default); explicit values in the config win, null keeps
        the images unnormalised. Call before :meth:`setup`; :meth:`describe` then records the values in use.

        Raises:
            ConfigError: values that are not one positive std per mean.
        """
        current = self.preprocessing.get("normalize", "auto")
        if mean is None or std is None:
            return
        if current != "auto":
            log.info("data.preprocessing.normalize=%s is used instead of %s's mean/std.", current, source)
            return
        values = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        normalization_spec(values)
        self.preprocessing["normalize"] = values
        log.info("Images are normalised with %s's mean %s and std %s.", source, values["mean"], values["std"])

    def prepare_index(self) -> None:
        """Load the index and take class/label names from it; check they agree with the config."""
        if self.index is not None:
            return
        self.index = load_dataset_index(self.index_path)
        if self.task in ("classification", "joint") and self.index.class_names:
            if self.class_names and self.class_names != list(self.index.class_names) and self.task == "classification":
                raise ConfigError(f"data.class_names {self.class_names} differ from the index's "
                                  f"{self.index.class_names} ('{self.index_path}').",
                                  hint="remove data.class_names to take the index's, or fix the index.")
            if self.task == "classification":
                self.class_names = list(self.index.class_names)
        if self.has_label_image and self.index.labels:
            by_value = sorted(self.index.labels.items(), key=lambda kv: kv[1])
            if [v for _, v in by_value] != list(range(len(by_value))):
                raise IndexValidationError(f"Index '{self.index_path}' label values {dict(by_value)} are not "
                                           "0..N-1.", hint="relabel the maps to consecutive values.",
                                           path=self.index_path)
            self.label_names = [k for k, _ in by_value]
        if self.has_label_image and getattr(self.index, "label_remap", None):
            # the index keeps a subset of the label values under new ones: apply it wherever label maps are read
            self.preprocessing["label_remap"] = [[int(s), int(d)] for s, d in sorted(self.index.label_remap.items())]
        names = self.class_names if self.task == "classification" else self.label_names
        if names and len(names) != self.num_classes and not (self.num_classes == 1 and len(names) == 2):
            raise ConfigError(f"data.num_classes={self.num_classes} but the index '{self.index_path}' names "
                              f"{len(names)}: {names}.", hint=f"set data.num_classes={len(names)}.")

    def _records(self, split: str) -> list[dict[str, Any]]:
        recs = self.index.records(fold=self.fold, split=split)
        if not recs:
            raise IndexValidationError(f"Index '{self.index_path}' has no {split} cases for fold {self.fold}.",
                                       hint=f"choose data.fold in 0..{self.index.num_folds - 1}.",
                                       path=self.index_path)
        if self.task == "joint":
            missing = [r["case_id"] for r in recs if r.get(self.class_key) is None]
            if missing:
                raise IndexValidationError(f"Joint task: cases {missing[:5]} lack the class key '{self.class_key}'.",
                                           hint="store the class in each case's metadata (meta_class).",
                                           path=self.index_path)
            for r in recs:
                r["class"] = int(r[self.class_key])
        if self.soft_label and split == "train":
            attach_soft_labels(recs, self.soft_label, index_path=self.index_path)
        return recs

    def setup(self, stage: str | None = None) -> None:
        """Build the train/val datasets (caching the deterministic transforms)."""
        self.prepare_index()
        if self.train_ds is not None:
            return
        common = dict(spatial_dims=self.spatial_dims, has_label=self.has_label_image, patch_size=self.patch_size)
        if self.kind == "archive":
            load = False
            train_data = archive_items(self._records("train"), context_slices=self.context_slices)
            val_data = archive_items(self._records("val"), context_slices=self.context_slices)
            # the deterministic preprocessing on stacks of slices at once (per-channel transforms only)
            from medeff.data.stacked import preprocess_stacked

            det = preprocessing_transforms(self.preprocessing, load=False, **common)
            pre_train, pre_val = preprocess_stacked(train_data, det), preprocess_stacked(val_data, det)
            if pre_train is not None and pre_val is not None:
                train_data, val_data, self._stacked = pre_train, pre_val, len(det)
        else:
            load = True
            train_data, val_data = self._records("train"), self._records("val")
        t_train = self._train_transforms(self.augmentation, load)
        t_val = self._cached(eval_transforms(self.preprocessing, load=load, **common))
        self.train_indices = None
        if self.oversample:
            self.train_indices = oversampled_indices([int(r["label"]) for r in train_data], self.oversample,
                                                     self.class_names)
            log.info("data.oversample %s: %d training draws per epoch from %d images.", self.oversample,
                     len(self.train_indices), len(train_data))
        self.train_ds = CacheDataset(train_data, t_train, cache_rate=self.cache_rate, num_workers=None,
                                     progress=False, copy_cache=True)
        self.val_ds = CacheDataset(val_data, t_val, cache_rate=self.cache_rate, num_workers=None, progress=False,
                                   copy_cache=False)

    # ---- loaders ----------------------------------------------------------------------------------------------
    def _current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def _reseed_transforms(self, seed: int) -> None:
        self.train_ds.transform.set_random_state(seed=seed)
        if self.batch_augment is not None:
            self.batch_augment.reseed(seed)

    def _cached(self, transform: Compose) -> Compose:
        """``transform`` with its deterministic preprocessing read from / written to ``cache_dir`` (volumes), or
        without it when setup() applied it to the archive items already."""
        if self._stacked:
            return Compose(list(transform.transforms[self._stacked:]))
        if self.cache_dir is None or self.kind != "volume":
            return transform
        from medeff.data.cache import DiskCached, preprocessing_fingerprint

        common = dict(spatial_dims=self.spatial_dims, has_label=self.has_label_image, patch_size=self.patch_size)
        n = len(preprocessing_transforms(self.preprocessing, load=True, **common))
        if self.disk_cache is None:
            keys = ["image"] + (["label"] if self.has_label_image else [])
            self.disk_cache = DiskCached(Compose(transform.transforms[:n]), self.cache_dir, keys,
                                         preprocessing_fingerprint(self.preprocessing, **common))
        return Compose([self.disk_cache, *transform.transforms[n:]])

    def _train_transforms(self, augmentation: Mapping[str, Any], load: bool) -> Compose:
        """The training chain; with ``batch_augmentation`` only the deterministic part (augmentation and
        normalisation move to :meth:`augment_batch`)."""
        common = dict(spatial_dims=self.spatial_dims, has_label=self.has_label_image, patch_size=self.patch_size)
        if not self.batch_augmentation:
            return self._cached(train_transforms(self.preprocessing, dict(augmentation), load=load, **common))
        from medeff.data.batch_augment import BatchAugment

        seed = self.batch_augment.seed if self.batch_augment is not None else self.seed
        self.batch_augment = BatchAugment(augmentation, normalize=normalization_spec(
            self.preprocessing.get("normalize")), seed=seed)
        plain = {**self.preprocessing, "normalize": None}
        return self._cached(train_transforms(plain, {}, load=load, **common))

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Apply the batch augmentation (``batch_augmentation=true``) to a training batch; otherwise unchanged."""
        if self.batch_augment is None:
            return batch
        return {**batch, "image": self.batch_augment(batch["image"])}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if self.batch_augment is not None and trainer is not None and trainer.training:
            return self.augment_batch(batch)
        return batch

    def set_augmentation(self, augmentation: Mapping[str, Any]) -> None:
        """Replace the random augmentation spec (progressive learning changes its magnitude between stages).

        The random half of the training transforms is rebuilt; the cached deterministic half is kept (MONAI's
        ``CacheDataset`` applies the transforms after the first random one to its cached items). With
        ``num_workers > 0`` and no ``seed`` the loader's workers are persistent and keep their copy until restarted.

        Raises:
            ConfigError: an unknown or invalid augmentation key.
        """
        t_train = self._train_transforms(augmentation, load=self.kind != "archive")
        self.augmentation = dict(augmentation)
        if self.train_ds is not None:
            self.train_ds.transform = t_train

    def train_dataloader(self) -> DataLoader:
        # classification: a last batch of one image would reach batch norm after global pooling with one value
        drop_last = len(self.train_ds) > self.batch_size and (self.kind == "archive" or self.task == "classification")
        indices = getattr(self, "train_indices", None)
        if self.seed is None:
            if indices is not None:
                return DataLoader(self.train_ds, batch_size=self.batch_size, sampler=SubsetRandomSampler(indices),
                                  num_workers=self.num_workers, drop_last=drop_last,
                                  persistent_workers=self.num_workers > 0)
            return DataLoader(self.train_ds, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                              drop_last=drop_last, persistent_workers=self.num_workers > 0)
        sampler = EpochSeededSampler(len(self.train_ds), self.seed, self._current_epoch, self._reseed_transforms,
                                     indices=indices)
        return DataLoader(self.train_ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          drop_last=drop_last, persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        bs = self.batch_size if self.kind == "archive" else self.val_batch_size
        return DataLoader(self.val_ds, batch_size=bs, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
