"""Training and prediction on 2D images indexed from class folders (JPEG/PNG), split by `medeff split`."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medeff.config import compose
from medeff.data.transforms import eval_transforms, read_volume
from medeff.errors import ConfigError

from .helpers import fast_overrides


def _png(path, arr):
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(arr)), str(path))
    return path


def test_2d_raster_loads_and_resizes(tmp_path):
    img = np.tile(np.arange(30, dtype=np.uint8) * 8, (20, 1))  # 20 rows x 30 columns, brighter to the right
    path = _png(tmp_path / "a b (1).png", img)
    arr, aff = read_volume(path)
    assert arr.shape == (30, 20) and aff.shape == (4, 4) and np.allclose(np.diag(aff), 1.0)
    spec = {"orientation": None, "spacing": None, "intensity": {"mode": "window", "window": [0, 255]},
            "resize": [16, 16]}
    out = eval_transforms(spec, spatial_dims=2, has_label=False)({"image": str(path)})
    t = np.asarray(out["image"])
    assert t.shape == (1, 16, 16) and 0.0 <= t.min() and t.max() <= 1.0
    assert t[0, -1].mean() > t[0, 0].mean()  # the column axis (i) keeps its direction
    with pytest.raises(ConfigError, match="resize must give 2"):
        eval_transforms({**spec, "resize": [16]}, spatial_dims=2, has_label=False)


def test_train_and_predict_on_image_folder_split(tmp_path):
    from medeff.data import build_index, index_config
    from medeff.data.split_build import build_split, split_config
    from medeff.engine.predict import predict
    from medeff.engine.train import train

    rng = np.random.default_rng(0)
    for k, cls in enumerate(("Normal cases", "Bengin cases", "Malignant cases")):
        for i in range(5):
            img = rng.integers(0, 60, size=(40, 48)).astype(np.uint8)
            img[10:30, 8 + 12 * k: 20 + 12 * k] += 150  # a class-specific bright patch
            _png(tmp_path / "set" / cls / f"{cls.split()[0]} case ({i + 1}).jpg", img)
    build_index(tmp_path / "set", tmp_path / "i.json", index_config([
        "folds.k=2", "class_names=[normal,benign,malignant]",
        "folders.class_map={Normal cases: normal, Bengin cases: benign, Malignant cases: malignant}"]))
    build_split(tmp_path / "i.json", tmp_path / "sp", split_config([
        "protocol=random", "fractions.train=0.6", "fractions.val=0.2", "fractions.test=0.2"]))
    run = tmp_path / "run"
    res = train(compose("train", ["experiment=iq_othnccd", f"data.index={tmp_path / 'sp' / 'train.json'}",
                                  "data.patch_size=[32,32]", "data.batch_size=4", "trainer.limit_train_batches=null",
                                  "trainer.limit_val_batches=null", *fast_overrides(run)]))
    # 9 training images in batches of 4: the last batch of 1 is dropped (batch norm after pooling needs 2 values)
    assert res["last_checkpoint"] and "val/balanced_accuracy" in res["metrics"]
    out = tmp_path / "pred"
    predict(compose("predict", [f"ckpt={res['last_checkpoint']}", f"input={tmp_path / 'sp' / 'test.json'}",
                                f"output_dir={out}", "device=cpu"]))
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    test_ids = {r["case_id"] for r in csv.DictReader((tmp_path / "sp" / "splits.csv").open()) if r["split"] == "test"}
    assert {r["case_id"] for r in rows} == test_ids and len(rows) == 3
    for r in rows:
        assert float(r["p_normal"]) + float(r["p_benign"]) + float(r["p_malignant"]) == pytest.approx(1.0, abs=1e-5)
