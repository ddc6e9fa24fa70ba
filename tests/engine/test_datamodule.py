"""Data module: archive slices (2D and 2.5D), volume caching, transform checks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from medeff.data.datamodule import MedeffDataModule, archive_items
from medeff.data.transforms import augmentation_transforms, preprocessing_transforms
from medeff.errors import ConfigError


def test_2p5d_items_stack_neighbouring_slices_of_the_same_nodule(nodule_index):
    from medeff.data.datamodule import load_dataset_index

    index = load_dataset_index(nodule_index)
    rec = index.records(fold=None)[0]
    items = archive_items([rec], context_slices=1)
    with np.load(rec["image"]) as z:
        images = z["images"]
    rows = rec["rows"]
    assert len(items) == len(rows)
    assert items[0]["image"].shape == (3, 64, 64)
    np.testing.assert_array_equal(items[0]["image"][0], images[rows[0]])  # edge repeats itself
    np.testing.assert_array_equal(items[1]["image"][0], images[rows[0]])
    np.testing.assert_array_equal(items[1]["image"][1], images[rows[1]])
    np.testing.assert_array_equal(items[1]["image"][2], images[rows[2]])
    assert all(it["label"] == rec["label"] and it["case_id"] == rec["case_id"] for it in items)


def test_archive_split_follows_index_folds(nodule_index):
    dm = MedeffDataModule(str(nodule_index), kind="archive", task="classification", spatial_dims=2, in_channels=1,
                          num_classes=2, fold=1, batch_size=4,
                          preprocessing={"intensity": {"mode": "window", "window": [0, 255]}})
    dm.setup("fit")
    assert dm.class_names == ["benign", "malignant"]
    val_cases = {it["case_id"] for it in dm.val_ds.data}
    train_cases = {it["case_id"] for it in dm.train_ds.data}
    assert val_cases and train_cases and not val_cases & train_cases
    fold_of = {r["case_id"]: r["fold"] for r in dm.index.records(fold=None)}
    assert {fold_of[c] for c in val_cases} == {1}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0


def test_volume_cache_reads_nothing_after_setup(organ_index, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(organ_index.parent, root)
    import json

    doc = json.loads((root / "index.json").read_text())
    doc["root"] = str(root)
    (root / "index.json").write_text(json.dumps(doc))
    dm = MedeffDataModule(str(root / "index.json"), kind="volume", task="segmentation", spatial_dims=3,
                          num_classes=7, patch_size=[16, 16, 16], batch_size=1,
                          preprocessing={"spacing": [10.0, 12.0, 12.0],
                                         "intensity": {"mode": "window", "window": [-160, 240]}},
                          augmentation={"crop": {"mode": "pos_neg", "num_samples": 2}, "flip_prob": 0.5})
    dm.setup("fit")
    for f in root.glob("*.nii.gz"):
        f.unlink()  # every later epoch must come from the cache
    for _ in range(2):
        batches = list(dm.train_dataloader())
        assert len(batches) == 2 and batches[0]["image"].shape == (2, 1, 16, 16, 16)
        assert batches[0]["label"].shape == (2, 1, 16, 16, 16) and int(batches[0]["label"].max()) <= 6
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[0] == 1 and val["label"].shape[2:] == val["image"].shape[2:]
    assert dm.label_names[1] == "liver"


def test_bad_specs_are_config_errors():
    with pytest.raises(ConfigError, match="window"):
        preprocessing_transforms({"intensity": {"mode": "window", "window": [400, -1000]}}, spatial_dims=3,
                                 has_label=False)
    with pytest.raises(ConfigError, match="spacing"):
        preprocessing_transforms({"spacing": [1.0, 1.0]}, spatial_dims=3, has_label=False)
    with pytest.raises(ConfigError, match="Unknown augmentation key"):
        augmentation_transforms({"flip_probability": 0.5}, spatial_dims=2, has_label=False)
    with pytest.raises(ConfigError, match="pos_neg"):
        augmentation_transforms({"crop": {"mode": "pos_neg"}}, spatial_dims=3, has_label=False, patch_size=[8] * 3)
    with pytest.raises(ConfigError, match="context_slices"):
        MedeffDataModule("x.json", kind="archive", spatial_dims=2, in_channels=1, context_slices=1)
    with pytest.raises(ConfigError, match="data.index"):
        MedeffDataModule("???", kind="volume")


def test_3d_classification_crops_are_resampled_and_fitted_to_the_patch(crop_index):
    """The nodule_3d data config on NIfTI crops of different sizes: every item comes out at data.patch_size."""
    from hydra.utils import instantiate

    from medeff.config import compose

    cfg = compose("train", ["experiment=nodule_3d", f"data.index={crop_index}", "data.patch_size=[24,24,24]",
                            "data.batch_size=2"])
    dm = instantiate(cfg.data, augmentation=dict(cfg.augmentation), _convert_="all")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 24, 24, 24)
    assert sorted(batch["label"].tolist()) == [0, 1]
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[1:] == (1, 24, 24, 24)
