"""Archive slices are preprocessed as stacks in setup(): same values as the per-item chain, fallback otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medeff.data.stacked import preprocess_stacked
from medeff.data.transforms import eval_transforms, preprocessing_transforms

PRE = {"intensity": {"mode": "window", "window": [20, 200], "clip": True}, "resize_to_patch": True,
       "normalize": {"mean": [0.5], "std": [0.25]}}


def _items(n=7, c=3, size=20, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, (c, size, size), dtype=np.uint8), "case_id": f"c{i}", "label": i % 2}
            for i in range(n)]


@pytest.mark.parametrize("spec", [PRE, {**PRE, "resize": [12, 12], "resize_to_patch": False}])
def test_stacked_equals_per_item(spec):
    items = _items()
    common = dict(spatial_dims=2, has_label=False, patch_size=[16, 16])
    det = preprocessing_transforms(spec, load=False, **common)
    out = preprocess_stacked(items, det, chunk=3)  # chunks of 3, 3, 1
    per_item = eval_transforms({**spec, "normalize": None}, load=False, **common)
    assert [o["case_id"] for o in out] == [i["case_id"] for i in items] and out[2]["label"] == 0
    for o, it in zip(out, items):
        torch.testing.assert_close(o["image"], per_item(dict(it))["image"])
        assert o["image"].untyped_storage().nbytes() == o["image"].numel() * 4  # not a view of the whole chunk


def test_channel_mixing_or_bad_values_fall_back():
    common = dict(spatial_dims=2, has_label=False, patch_size=[16, 16])
    zscore = preprocessing_transforms({"intensity": {"mode": "zscore"}}, load=False, **common)
    assert preprocess_stacked(_items(), zscore) is None
    windows = preprocessing_transforms({"channels": "hu_windows"}, load=False, **common)
    assert preprocess_stacked(_items(c=1), windows) is None
    det = preprocessing_transforms(PRE, load=False, **common)
    mixed = _items() + _items(n=1, size=24)
    assert preprocess_stacked(mixed, det) is None
    bad = _items()
    bad[3]["image"] = bad[3]["image"].astype(np.float32)
    bad[3]["image"][0, 1, 1] = np.nan
    assert preprocess_stacked(bad, det) is None


def test_data_module_items_match_the_per_item_chain(tmp_path):
    from medeff.data.datamodule import MedeffDataModule, archive_items
    from medeff.data.index_build import build_index
    from medeff.demo.phantom import make_nodule_archive

    make_nodule_archive(tmp_path, n_exams=6, malignant_fraction=0.5, seed=2)
    build_index(tmp_path, tmp_path / "index.json", overrides=["folds.k=2", "class_names=[benign,malignant]"])
    dm = MedeffDataModule(str(tmp_path / "index.json"), kind="archive", task="classification", spatial_dims=2,
                          in_channels=3, context_slices=1, batch_size=4, patch_size=[48, 48], preprocessing=PRE,
                          augmentation={"flip_prob": 0.5})
    dm.setup("fit")
    assert dm._stacked == len(preprocessing_transforms(PRE, load=False, spatial_dims=2, has_label=False,
                                                       patch_size=[48, 48]))
    raw = archive_items(dm.index.records(fold=0, split="val"), context_slices=1)
    chain = eval_transforms(PRE, load=False, spatial_dims=2, has_label=False, patch_size=[48, 48])
    assert len(dm.val_ds) == len(raw)
    for i in (0, len(raw) - 1):
        torch.testing.assert_close(dm.val_ds[i]["image"], chain(dict(raw[i]))["image"])
    assert tuple(dm.train_ds[0]["image"].shape) == (3, 48, 48)
