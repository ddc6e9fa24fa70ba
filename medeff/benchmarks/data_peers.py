"""Peers of ``medeff bench data``: the same records and augmentation through MONAI's per-sample chain and through
nnU-Net's batchgenerators (see :mod:`medeff.benchmarks.data_pipeline`)."""

from __future__ import annotations

from typing import Any

__all__ = ["monai_reference_dataset", "batchgenerators_reference"]


def monai_reference_dataset(dm: Any) -> tuple[Any, Any]:
    """MONAI's per-sample chain over the records of ``dm``'s training set, doing the recipe's augmentation.

    Files are read by MONAI's ``LoadImaged`` (channel first); the preprocessing and augmentation steps are the MONAI
    transforms of the recipe (orientation, spacing, intensity window, crops, flips, rotations, intensity jitter,
    noise, normalisation), applied image by image in a MONAI ``CacheDataset``.

    Returns:
        ``(dataset, loader)`` with ``dm``'s batch size and workers.
    """
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Compose, EnsureTyped, LoadImaged

    from medeff.data.transforms import augmentation_transforms, preprocessing_transforms, train_transforms

    common = dict(spatial_dims=dm.spatial_dims, has_label=dm.has_label_image, patch_size=dm.patch_size)
    load = dm.kind != "archive"
    keys = ["image"] + (["label"] if dm.has_label_image else [])
    det = preprocessing_transforms(dm.preprocessing, load=load, **common)
    full = train_transforms(dm.preprocessing, dm.augmentation, load=load, **common).transforms
    rnd = augmentation_transforms(dm.augmentation, **common)
    tail = list(full[len(det) + len(rnd):])  # normalisation + EnsureTyped
    head = [LoadImaged(keys, image_only=True, ensure_channel_first=True)] if load else []
    chain = Compose(head + list(det[1:]) + list(rnd) + tail[:-1] + [EnsureTyped(["image"], track_meta=False)])
    if load:
        records = [dict(r) for r in dm.train_ds.data]
    else:  # the raw slices (the data module's items may be preprocessed already)
        from medeff.data.datamodule import archive_items

        records = archive_items(dm.index.records(fold=dm.fold, split="train"), context_slices=dm.context_slices)
    ds = CacheDataset(records, chain, cache_rate=dm.cache_rate, num_workers=None, progress=False, copy_cache=True)
    classify = dm.kind == "archive" or dm.task == "classification"
    loader = DataLoader(ds, batch_size=dm.batch_size, shuffle=True, num_workers=dm.num_workers,
                        drop_last=classify and len(ds) > dm.batch_size)
    return ds, loader


def batchgenerators_reference(dm: Any, path: str | None = None, seed: int = 0) -> tuple[Any, int] | str:
    """nnU-Net's batchgenerators chain doing the recipe's augmentation, over ``dm``'s training records.

    The deterministic preprocessing (medeff's, item by item) makes the arrays; every batch then draws ``batch``
    items (volumes: ``batch * num_samples`` patches) and runs batchgenerators' transforms on the NumPy batch:
    ``SpatialTransform`` (random crop for 3D patches, rotation; no elastic deformation, no scaling),
    ``MirrorTransform``, ``Rot90Transform``, multiplicative and additive brightness, Gaussian noise (its additive
    brightness is Gaussian, MONAI's shift uniform; its crops are uniform, nnU-Net's loader oversamples foreground).

    Args:
        path: a folder to put on ``sys.path`` first (batchgenerators installed outside the environment).

    Returns:
        ``(make_loader, epoch_samples)``, or the reason (text) when batchgenerators does not import.
    """
    import math
    import sys

    import numpy as np
    import torch

    if path and str(path) not in sys.path:
        sys.path.insert(0, str(path))
    try:
        from batchgenerators.transforms.abstract_transforms import Compose as BGCompose
        from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                                 BrightnessTransform)
        from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform
        from batchgenerators.transforms.spatial_transforms import MirrorTransform, Rot90Transform, SpatialTransform
    except ImportError as exc:
        return f"batchgenerators does not import ({exc}); install it or set peers.batchgenerators_path"
    from monai.transforms import Compose

    from medeff.data.datamodule import archive_items
    from medeff.data.transforms import preprocessing_transforms

    common = dict(spatial_dims=dm.spatial_dims, has_label=dm.has_label_image, patch_size=dm.patch_size)
    load = dm.kind != "archive"
    det = Compose(preprocessing_transforms(dm.preprocessing, load=load, **common))
    raw = [dict(r) for r in dm.train_ds.data] if load else \
        archive_items(dm.index.records(fold=dm.fold, split="train"), context_slices=dm.context_slices)
    items = [det(r) for r in raw]
    images = [np.asarray(it["image"], dtype=np.float32) for it in items]
    segs = [np.asarray(it["label"], dtype=np.float32) for it in items] if dm.has_label_image else None
    labels = [int(it.get("label", 0)) for it in items] if not dm.has_label_image else None
    aug = dict(dm.augmentation)
    crop = dict(aug.get("crop") or {})
    cropping = crop.get("mode", "none") != "none"
    per_item = int(crop.get("num_samples", 1)) if cropping else 1
    rad = math.radians(float(aug.get("rotate_deg", 15.0)))
    patch = list(dm.patch_size) if cropping else list(images[0].shape[1:])
    chain = [SpatialTransform(patch, patch_center_dist_from_border=[p // 2 for p in patch], do_elastic_deform=False,
                              do_rotation=float(aug.get("rotate_prob", 0)) > 0, angle_x=(-rad, rad),
                              angle_y=(-rad, rad), angle_z=(-rad, rad), do_scale=False, border_mode_data="nearest",
                              order_data=1, order_seg=0, random_crop=cropping,
                              p_rot_per_sample=float(aug.get("rotate_prob", 0)))]
    if float(aug.get("flip_prob", 0)) > 0:
        chain.append(MirrorTransform(axes=tuple(int(a) for a in aug.get("flip_axes", range(dm.spatial_dims)))))
    if float(aug.get("rot90_prob", 0)) > 0:
        chain.append(Rot90Transform((1, 2, 3), axes=tuple(int(a) for a in aug.get("rot90_axes", [0, 1])),
                                    p_per_sample=float(aug["rot90_prob"])))
    ip = float(aug.get("intensity_prob", 0))
    if ip > 0 and float(aug.get("scale", 0)) > 0:
        chain.append(BrightnessMultiplicativeTransform((1 - float(aug["scale"]), 1 + float(aug["scale"])),
                                                       per_channel=False, p_per_sample=ip))
    if ip > 0 and float(aug.get("shift", 0)) > 0:
        chain.append(BrightnessTransform(0.0, float(aug["shift"]), per_channel=False, p_per_sample=ip))
    if float(aug.get("noise_prob", 0)) > 0:
        chain.append(GaussianNoiseTransform((0, float(aug.get("noise_std", 0.02)) ** 2),
                                            p_per_sample=float(aug["noise_prob"])))
    transform = BGCompose(chain)
    rng = np.random.default_rng(seed)
    n_batches = max(len(images) // dm.batch_size, 1)

    def batches():
        for _ in range(n_batches):
            idx = rng.integers(0, len(images), dm.batch_size * per_item)
            shape = np.max([images[i].shape for i in idx], axis=0)
            pad = [[(0, int(m - d)) for m, d in zip(shape, images[i].shape)] for i in idx]
            data = np.stack([np.pad(images[i], w, mode="edge") for i, w in zip(idx, pad)])
            d = {"data": data}
            if segs is not None:
                d["seg"] = np.stack([np.pad(segs[i], w) for i, w in zip(idx, pad)])
            d = transform(**d)
            batch = {"image": torch.from_numpy(np.ascontiguousarray(d["data"], dtype=np.float32))}
            if segs is not None:
                batch["label"] = torch.from_numpy(np.ascontiguousarray(d["seg"])).long()
            else:
                batch["label"] = torch.tensor([labels[i] for i in idx])
            yield batch

    return batches, len(images) * per_item
