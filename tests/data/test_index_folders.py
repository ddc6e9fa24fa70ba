"""Class folders of 2D raster images: reading (grey conversion), indexing, near-duplicate groups, splits."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medeff.data import build_index
from medeff.data.grouping import UnionFind, group_summary, similarity_groups
from medeff.data.index_sources import detect_kind
from medeff.data.leakage import array_hash, thumbnail
from medeff.data.splits import check_fractions, grouped_split, random_split, split_leakage
from medeff.errors import ConfigError, ImageReadError, IndexValidationError
from medeff.io import read_image

# near-duplicate settings used for 2D slice sets (docs/workflows/iq_othnccd.md)
NEAR = ["leakage.thumbnail_size=32", "leakage.confirm_voxels=1024", "leakage.near_threshold=0.85"]


def write_raster(path: Path, arr: np.ndarray) -> Path:
    """Write ``arr`` ([row, col] grey or [row, col, 3] RGB, uint8) as PNG/JPEG (format from the suffix)."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=arr.ndim == 3)
    sitk.WriteImage(img, str(path))
    return path


def blob(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A smooth random image (upsampled 6x6 noise): unrelated blobs hardly correlate."""
    low = rng.normal(size=(6, 6))
    rows = np.linspace(0, 5, size)
    grid = np.array([[low[int(round(r)), int(round(c))] for c in rows] for r in rows])
    from scipy.ndimage import gaussian_filter

    g = gaussian_filter(grid, 4.0)
    g = (g - g.min()) / (np.ptp(g) + 1e-9)
    return (40 + 180 * g).astype(np.uint8)


@pytest.fixture()
def image_folders(tmp_path, rng) -> tuple[Path, dict[str, list[str]]]:
    """Two class folders (with a space in the names) of PNGs: per class 3 'patients' of 2 neighbouring slices
    (near-duplicates), plus one exact copy; a README that must be ignored."""
    root = tmp_path / "set"
    files: dict[str, list[str]] = {}
    for cls in ("Normal cases", "Sick cases"):
        for p in range(3):
            base = blob(rng)
            for s in range(2):
                noisy = np.clip(base.astype(int) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
                rel = f"{cls}/{cls.split()[0]} case ({p * 2 + s + 1}).png"
                write_raster(root / rel, noisy)
                files.setdefault(cls, []).append(rel)
    shutil.copy(root / files["Normal cases"][0], root / "Normal cases" / "Normal case (99).png")
    files["Normal cases"].append("Normal cases/Normal case (99).png")
    (root / "README.txt").write_text("not an image")
    return root, files


# ---- reading --------------------------------------------------------------------------------------------------------
def test_raster_reader_grey_rgb_and_orientation(tmp_path):
    grey = np.arange(6 * 4, dtype=np.uint8).reshape(6, 4) * 10  # 6 rows, 4 columns
    img = read_image(write_raster(tmp_path / "g.png", grey))
    assert img.array.shape == (4, 6) and img.array.dtype == np.uint8  # [i, j] = [column, row]
    assert np.array_equal(img.array, grey.T) and img.spacing == (1.0, 1.0) and not img.meta["repairs"]
    same = np.repeat(grey[..., None], 3, axis=2)  # grey stored as RGB: values kept exactly
    img = read_image(write_raster(tmp_path / "s.png", same))
    assert np.array_equal(img.array, grey.T) and "equal channels" in img.meta["repairs"][0]
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    img = read_image(write_raster(tmp_path / "c.png", rgb))
    assert np.all(img.array == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)) and "BT.601" in img.meta["repairs"][0]
    jpg = read_image(write_raster(tmp_path / "g.jpg", grey))
    assert jpg.array.shape == (4, 6) and np.abs(jpg.array.astype(int) - grey.T).max() < 20  # lossy, same layout


def test_raster_reader_refuses_broken_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image(bad)


# ---- indexing -------------------------------------------------------------------------------------------------------
def test_index_image_folders_classes_and_leaks(image_folders, tmp_path, cfg_over):
    root, files = image_folders
    assert detect_kind(root) == "folders"
    idx = build_index(root, tmp_path / "i.json", cfg_over("folds.k=2", "class_names=[normal,sick]",
                                                         "folders.class_map={Normal cases: normal, Sick cases: sick}",
                                                         *NEAR))
    assert idx.task == "classification" and idx.spatial_dims == 2 and idx.source_kind == "folders"
    assert idx.class_names == ["normal", "sick"] and len(idx.all_cases) == 13
    by_file = {c.image[0]: c for c in idx.all_cases}
    assert set(by_file) == {f for fs in files.values() for f in fs}  # README ignored, spaces/parentheses kept
    assert all(by_file[f].label == 0 for f in files["Normal cases"])
    assert all(by_file[f].label == 1 for f in files["Sick cases"])
    assert len({c.group for c in idx.all_cases}) == 13  # no patient ids: each image its own group
    leak = idx.leakage
    # the exact copy and the neighbouring slices are found whenever their folds differ
    folds = {f: by_file[f].fold for f in by_file}
    copy_a, copy_b = files["Normal cases"][0], files["Normal cases"][-1]
    pair = {by_file[copy_a].case_id, by_file[copy_b].case_id}
    if folds[copy_a] != folds[copy_b]:
        assert [sorted(p) for p in leak["identical"]] == [sorted(pair)]
    near = {frozenset(p[:2]) for p in leak["near_identical"]}
    for cls_files in files.values():
        for a, b in zip(cls_files[0:6:2], cls_files[1:6:2]):
            if folds[a] != folds[b]:
                assert frozenset((by_file[a].case_id, by_file[b].case_id)) in near
    assert leak["n_identical"] + leak["n_near_identical"] > 0


def test_index_near_duplicate_groups_keep_copies_together(image_folders, tmp_path, cfg_over):
    root, files = image_folders
    idx = build_index(root, tmp_path / "i.json", cfg_over("folds.k=3", "groups.near_duplicates=true", *NEAR))
    assert idx.class_names == ["Normal cases", "Sick cases"]  # folder names when no class_map
    by_file = {c.image[0]: c for c in idx.all_cases}
    n = files["Normal cases"]
    assert by_file[n[0]].group == by_file[n[1]].group == by_file[n[-1]].group  # slices + exact copy
    assert by_file[n[0]].group != by_file[n[2]].group  # another 'patient'
    g = idx.leakage["groups"]
    assert g["n_groups"] == 6 and g["largest"] == 3 and g["mixed_class_groups"] == 0
    assert idx.leakage["n_identical"] == 0 and idx.leakage["n_near_identical"] == 0  # folds keep groups whole
    assert idx.fingerprint["num_groups"] == 6


def test_index_image_folders_bad_input(image_folders, tmp_path, cfg_over):
    root, _ = image_folders
    with pytest.raises(ConfigError, match="Sick caes"):
        build_index(root, tmp_path / "a.json", cfg_over("folds.k=2", "folders.class_map={Sick caes: sick}"))
    with pytest.raises(ConfigError, match="class_names"):
        build_index(root, tmp_path / "b.json", cfg_over("folds.k=2", "class_names=[normal]"))
    write_raster(root / "loose.png", blob(np.random.default_rng(1)))
    with pytest.raises(IndexValidationError, match="loose.png.*outside any class folder"):
        build_index(root, tmp_path / "c.json", cfg_over("folds.k=2"))
    assert not (tmp_path / "c.json").exists()


# ---- grouping and splits (library) -----------------------------------------------------------------------------------
def test_union_find_and_similarity_groups_are_transitive(rng):
    uf = UnionFind(5)
    uf.union(0, 3)
    uf.union(3, 4)
    assert uf.labels() == [0, 1, 2, 0, 0]
    a, b = blob(rng).astype(float), blob(rng).astype(float)
    drift = [(1 - t) * a + t * b for t in (0.0, 0.15, 0.3, 0.45)]  # A~B~C~D by steps; A and D unlike
    other = blob(rng)
    imgs = drift + [other, other.copy()]
    thumbs = [thumbnail(x, 16) for x in imgs]
    hashes = [array_hash(x) for x in imgs]
    groups = similarity_groups(hashes, thumbs, None, threshold=0.95)
    r = np.stack(thumbs) @ np.stack(thumbs).T / thumbs[0].size
    assert min(r[0, 1], r[1, 2], r[2, 3]) >= 0.95 > max(r[0, 2], r[0, 3], r[1, 3])  # only neighbours alike
    assert groups[:4] == [0, 0, 0, 0] and groups[4] == groups[5] == 1
    s = group_summary(groups, [0, 0, 0, 0, 1, 1])
    assert s["n_groups"] == 2 and s["size_counts"] == {"2": 1, "4": 1} and s["mixed_class_groups"] == 0
    assert similarity_groups(hashes, thumbs, None, threshold=0.95, source_groups=list("abcdeb"))[5] == 0


def test_grouped_split_never_splits_a_group_and_follows_fractions():
    rng = np.random.default_rng(3)
    groups = [f"g{i}" for i in range(200) for _ in range(int(rng.integers(1, 6)))]
    gclass = {f"g{i}": int(rng.integers(0, 3)) for i in range(200)}
    classes = [gclass[g] for g in groups]
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    sides = grouped_split(groups, classes, fr, seed=0)
    on = {}
    for g, s in zip(groups, sides):
        on.setdefault(g, set()).add(s)
    assert all(len(v) == 1 for v in on.values())
    for s, f in fr.items():
        for k in range(3):
            n_k = classes.count(k)
            got = sum(1 for c, x in zip(classes, sides) if c == k and x == s)
            assert abs(got - f * n_k) <= 6, (s, k, got, f * n_k)
    assert grouped_split(groups, classes, fr, seed=0) == sides  # deterministic
    assert grouped_split(groups, classes, fr, seed=1) != sides
    perm = rng.permutation(len(groups))  # does not depend on input order
    again = grouped_split([groups[i] for i in perm], [classes[i] for i in perm], fr, seed=0)
    assert [again[list(perm).index(i)] for i in range(len(groups))] == sides


def test_random_split_is_stratified_image_level():
    classes = [0] * 50 + [1] * 30 + [2] * 20
    sides = random_split(classes, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    for k, n in ((0, 50), (1, 30), (2, 20)):
        assert sum(1 for c, s in zip(classes, sides) if c == k and s == "test") == n // 10
    with pytest.raises(ConfigError, match="sum to 1"):
        check_fractions({"train": 0.8, "val": 0.1, "test": 0.2})
    with pytest.raises(ConfigError, match="exactly train, val and test"):
        check_fractions({"train": 1.0})


def test_split_leakage_counts_identical_and_near(rng):
    a, b, c = blob(rng), blob(rng), blob(rng)
    near_a = np.clip(a.astype(int) + 2, 0, 255).astype(np.uint8)
    imgs = [a, a.copy(), near_a, b, c]
    sides = ["train", "test", "test", "test", "val"]
    thumbs = [thumbnail(x, 16) for x in imgs]
    leak = split_leakage(sides, [array_hash(x) for x in imgs], thumbs, None, threshold=0.98)
    assert leak["n_test"] == 3 and leak["n_leaked"] == 2 and leak["n_identical"] == 1
    assert [e[:2] for e in leak["examples"]] == [[1, 0], [2, 0]]


# ---- the split command ----------------------------------------------------------------------------------------------
def test_split_command_writes_consistent_files(image_folders, tmp_path, cfg_over):
    from medeff.cli.main import main
    from medeff.data import load_index

    root, _ = image_folders
    build_index(root, tmp_path / "i.json", cfg_over("folds.k=2", "groups.near_duplicates=true", *NEAR))
    fr = ["fractions.train=0.5", "fractions.val=0.25", "fractions.test=0.25"]
    for protocol in ("grouped", "random"):
        out = tmp_path / protocol
        assert main(["split", str(tmp_path / "i.json"), str(out), f"protocol={protocol}", *fr]) == 0
        rows = list(csv.DictReader((out / "splits.csv").open()))
        assert list(rows[0]) == ["case_id", "file", "label", "class_name", "group", "split", "protocol"]
        assert len(rows) == 13 and {r["protocol"] for r in rows} == {protocol}
        train, test = load_index(out / "train.json"), load_index(out / "test.json")
        split_of = {r["case_id"]: r["split"] for r in rows}
        assert {c.case_id for c in test.all_cases} == {k for k, s in split_of.items() if s == "test"}
        assert all(split_of[c.case_id] == ("val" if c.fold == 0 else "train") for c in train.all_cases)
        assert len(train.all_cases) + len(test.all_cases) == 13
        summary = json.loads((out / "split_leakage.json").read_text())
        if protocol == "grouped":
            groups_on = {}
            for r in rows:
                groups_on.setdefault(r["group"], set()).add(r["split"])
            assert all(len(v) == 1 for v in groups_on.values())
            assert summary["leakage"]["n_leaked"] == 0 and summary["n_index_groups_on_two_sides"] == 0
    with pytest.raises(ConfigError, match="protocol"):
        from medeff.data.split_build import build_split, split_config

        build_split(tmp_path / "i.json", tmp_path / "x", split_config(["protocol=randm"]))


# ---- the real IQ-OTH/NCCD folder ------------------------------------------------------------------------------------
IQ_CLASSES = ["class_names=[normal,benign,malignant]",
              "folders.class_map={Normal cases: normal, Bengin cases: benign, Malignant cases: malignant}"]


def test_iq_othnccd_groups_and_split_leakage(shared_data, tmp_path):
    """1,097 JPEG slices without patient ids: near-duplicate groups, and what a random vs grouped split leaks."""
    from medeff.data import index_config
    from medeff.data.split_build import build_split, split_config

    src = shared_data / "iq_othnccd" / "The IQ-OTHNCCD lung cancer dataset"
    if not src.is_dir():
        pytest.skip(f"IQ-OTH/NCCD not found at {src}")
    idx = build_index(src, tmp_path / "iq.json", index_config(["groups.near_duplicates=true", *IQ_CLASSES, *NEAR]))
    assert len(idx.all_cases) == 1097
    counts = np.bincount([c.label for c in idx.all_cases])
    assert counts.tolist() == [416, 120, 561]
    g = idx.leakage["groups"]
    # measured: 317 groups, 166 single images, largest 34 (docs/workflows/iq_othnccd.md)
    assert 250 <= g["n_groups"] <= 400 and g["largest"] <= 60, g
    # the 42 groups of identical files all end inside one group each: no identical pair across folds
    assert idx.leakage["n_identical"] == 0 and idx.leakage["n_near_identical"] == 0
    res = {}
    for protocol in ("random", "grouped"):
        res[protocol] = build_split(tmp_path / "iq.json", tmp_path / protocol,
                                    split_config([f"protocol={protocol}"]))["leakage"]
    assert res["random"]["n_test"] == res["grouped"]["n_test"] == 110
    assert res["random"]["fraction_leaked"] > 0.5, res["random"]  # measured 85 of 110
    assert res["grouped"]["n_leaked"] == 0, res["grouped"]
    # a lookup of 32x32 thumbnails, learning nothing, matches the published 99% on the random split only
    from medeff.baselines.knn import knn_config, knn_predict_index

    acc = {p: knn_predict_index(tmp_path / p / "train.json", tmp_path / p / "test.json", tmp_path / f"knn_{p}",
                                knn_config())["accuracy"] for p in res}
    assert acc["random"] >= 0.95 and acc["grouped"] <= acc["random"] - 0.1, acc  # measured 0.991 and 0.755
