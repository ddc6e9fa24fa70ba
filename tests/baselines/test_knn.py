"""Thumbnail nearest-neighbour baseline: the lookup, its probabilities, and `medeff knn` on split indexes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medeff.baselines.knn import ThumbnailKNN
from medeff.errors import ConfigError


def smooth(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    from scipy.ndimage import gaussian_filter, zoom

    img = zoom(rng.normal(size=(6, 6)), size / 6, order=1)
    img = gaussian_filter(img, 2.0)
    return (40 + 180 * (img - img.min()) / (np.ptp(img) + 1e-9)).astype(np.uint8)


def test_knn_copies_the_nearest_class_and_gives_probabilities(rng):
    refs = [smooth(rng) for _ in range(6)]
    labels = [0, 0, 1, 1, 2, 2]
    knn = ThumbnailKNN(size=16, temperature=0.05).fit(refs, labels, n_classes=4)
    queries = [np.clip(r.astype(int) + rng.integers(-4, 5, r.shape), 0, 255) for r in refs]
    out = knn.predict(queries)
    assert out["nearest"].tolist() == list(range(6))  # each query finds its own source image
    assert out["prob"].argmax(1).tolist() == labels
    assert np.allclose(out["prob"].sum(1), 1.0) and np.all(out["prob"][:, 3] == 0)  # class 3: no reference
    assert np.all(out["nearest_r"] > 0.95)
    # the probability follows the best correlation per class: a blend of a class-0 and a class-1 image is torn
    mix = 0.5 * refs[0].astype(float) + 0.5 * refs[2].astype(float)
    p = knn.predict([mix])["prob"][0]
    assert 0.05 < p[0] < 0.95 and 0.05 < p[1] < 0.95
    # a cooler temperature sharpens the same ranking
    sharp = ThumbnailKNN(size=16, temperature=0.001).fit(refs, labels, n_classes=4).predict([mix])["prob"][0]
    assert sharp.max() > p.max() and sharp.argmax() == p.argmax()


def test_knn_rejects_bad_settings():
    with pytest.raises(ConfigError, match="temperature"):
        ThumbnailKNN(temperature=0)
    with pytest.raises(ConfigError, match="thumbnail_size"):
        ThumbnailKNN(size=1)
    with pytest.raises(ConfigError, match="before fit"):
        ThumbnailKNN().predict([np.zeros((4, 4))])


def test_knn_command_on_split_indexes(tmp_path, rng):
    import SimpleITK as sitk

    from medeff.cli.main import main
    from medeff.data import build_index, index_config

    root = tmp_path / "set"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for p in range(4):
            base = smooth(rng)
            for s in range(2):  # two near-identical slices per 'patient'
                img = np.clip(base.astype(int) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
                sitk.WriteImage(sitk.GetImageFromArray(img), str(root / cls / f"{cls} ({p * 2 + s}).png"))
    near = ["leakage.thumbnail_size=32", "leakage.confirm_voxels=1024", "leakage.near_threshold=0.85"]
    build_index(root, tmp_path / "i.json", index_config(["folds.k=2", "groups.near_duplicates=true", *near]))
    fr = ["fractions.train=0.5", "fractions.val=0.25", "fractions.test=0.25"]
    acc = {}
    for protocol in ("random", "grouped"):
        sp, out = tmp_path / f"split_{protocol}", tmp_path / f"knn_{protocol}"
        assert main(["split", str(tmp_path / "i.json"), str(sp), f"protocol={protocol}", *fr]) == 0
        assert main(["knn", str(sp / "train.json"), str(sp / "test.json"), str(out), "thumbnail_size=16"]) == 0
        rows = list(csv.DictReader((out / "predictions.csv").open()))
        assert list(rows[0]) == ["case_id", "file", "label", "p_a", "p_b", "predicted_class", "predicted_index",
                                 "nearest_file", "nearest_r"]
        test_ids = {r["case_id"] for r in csv.DictReader((sp / "splits.csv").open()) if r["split"] == "test"}
        assert {r["case_id"] for r in rows} == test_ids
        split_rows = {r["case_id"]: r for r in csv.DictReader((sp / "splits.csv").open())}
        assert all(split_rows[_id(r, split_rows)]["split"] == "train" for r in rows)  # references: training only
        summary = json.loads((out / "knn.json").read_text())
        acc[protocol] = summary["accuracy"]
        assert summary["n_test"] == len(rows) and summary["n_reference"] == sum(
            1 for r in split_rows.values() if r["split"] == "train")
    # random split: every test slice's neighbour slice can sit in training -> the lookup copies its class
    assert acc["random"] >= acc["grouped"]
    with pytest.raises(SystemExit):
        main(["knn"])


def _id(row: dict, split_rows: dict) -> str:
    """case id of the nearest reference image of a prediction row (by file)."""
    return next(k for k, r in split_rows.items() if r["file"] == row["nearest_file"])
