"""On-disk preprocessing cache (data.cache_dir): hits, invalidation by input file and preprocessing config,
damaged entries rebuilt, and the data module reading no volume twice."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medeff.data.cache import DiskCached, cache_key, preprocessing_fingerprint
from medeff.data.transforms import preprocessing_transforms

SPEC = {"orientation": "RAS", "spacing": [10.0, 12.0, 12.0], "intensity": {"mode": "window", "window": [-160, 240]},
        "normalize": None}


@pytest.fixture()
def organ_cases(tmp_path) -> tuple[Path, list[dict]]:
    """Three phantom CT volumes with label maps and their index (folds 0, 1, 1)."""
    import nibabel as nib

    from medeff.data.index_types import CaseRecord, DatasetIndex
    from medeff.demo.phantom import ORGAN_LABELS, make_phantom_ct

    root = tmp_path / "organs"
    root.mkdir()
    records, plain = [], []
    for seed, fold in zip(range(3), (0, 1, 1)):
        ct, lab = make_phantom_ct((36, 30, 14), (8.0, 8.0, 10.0), seed=seed)
        nib.save(nib.Nifti1Image(ct.array, ct.affine_ras), root / f"ct{seed}.nii.gz")
        nib.save(nib.Nifti1Image(lab.array, lab.affine_ras), root / f"ct{seed}_seg.nii.gz")
        records.append(CaseRecord(case_id=f"ct{seed}", image=[f"ct{seed}.nii.gz"], label=f"ct{seed}_seg.nii.gz",
                                  group=f"p{seed}", fold=fold))
        plain.append({"case_id": f"ct{seed}", "image": [str(root / f"ct{seed}.nii.gz")],
                      "label": str(root / f"ct{seed}_seg.nii.gz")})
    index = DatasetIndex(task="segmentation", source_kind="nifti", root=str(root), spatial_dims=3,
                         channel_names=["ct"], labels=dict(ORGAN_LABELS), class_names=[], num_folds=2, fold_seed=0,
                         stratified=False, all_cases=records)
    (root / "index.json").write_text(json.dumps(index.to_json(), indent=1))
    return root / "index.json", plain


def _cached(cache_dir: Path, spec: dict, builds: list) -> DiskCached:
    common = dict(spatial_dims=3, has_label=True, patch_size=None)
    det = preprocessing_transforms(spec, **common)

    def counting(d):
        builds.append(d["case_id"])
        out = d
        for t in det:
            out = t(out)
        return out

    return DiskCached(counting, cache_dir, ["image", "label"], preprocessing_fingerprint(spec, **common))


def test_second_read_hits_the_cache_with_identical_arrays(organ_cases, tmp_path):
    _, recs = organ_cases
    builds: list[str] = []
    first = _cached(tmp_path / "cache", SPEC, builds)(recs[0])
    again = _cached(tmp_path / "cache", SPEC, builds)(recs[0])  # a new run over the same cache folder
    assert builds == ["ct0"]
    for key in ("image", "label"):
        np.testing.assert_array_equal(np.asarray(first[key]), np.asarray(again[key]))
        torch.testing.assert_close(again[key].affine, first[key].affine.to(torch.float64))
    assert again["case_id"] == "ct0"
    again["image"] += 1  # copy-on-write map: the cached file is untouched
    third = _cached(tmp_path / "cache", SPEC, builds)(recs[0])
    np.testing.assert_array_equal(np.asarray(third["image"]), np.asarray(first["image"]))
    assert builds == ["ct0"]


def test_preprocessing_change_or_new_input_file_invalidates(organ_cases, tmp_path):
    _, recs = organ_cases
    builds: list[str] = []
    _cached(tmp_path / "cache", SPEC, builds)(recs[1])
    _cached(tmp_path / "cache", {**SPEC, "normalize": {"mean": [0.5], "std": [0.2]}}, builds)(recs[1])
    assert builds == ["ct1"]  # normalisation runs after the cache: same entry
    _cached(tmp_path / "cache", {**SPEC, "spacing": [10.0, 10.0, 12.0]}, builds)(recs[1])
    assert builds == ["ct1", "ct1"]
    path = Path(recs[1]["label"])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the label map was rewritten
    out = _cached(tmp_path / "cache", SPEC, builds)(recs[1])
    assert builds == ["ct1", "ct1", "ct1"]
    assert out["image"].shape[1:] == (29, 20, 12)  # 36*8/10, 30*8/12, 14*10/12 voxels


def test_damaged_entry_is_logged_and_rebuilt(organ_cases, tmp_path, caplog):
    _, recs = organ_cases
    builds: list[str] = []
    good = _cached(tmp_path / "cache", SPEC, builds)(recs[2])
    key = cache_key(recs[2], ["image", "label"], preprocessing_fingerprint(SPEC, spatial_dims=3, has_label=True,
                                                                          patch_size=None))
    npy = tmp_path / "cache" / key / "image.npy"
    data = bytearray(npy.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the pixel data: same size, same header
    npy.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="medeff"):
        rebuilt = _cached(tmp_path / "cache", SPEC, builds)(recs[2])
    assert builds == ["ct2", "ct2"]
    assert "damaged" in caplog.text and key in caplog.text
    np.testing.assert_array_equal(np.asarray(rebuilt["image"]), np.asarray(good["image"]))
    npy.write_bytes(npy.read_bytes()[:100])  # truncated
    (tmp_path / "cache" / key / "entry.json").write_text("{")  # and an unreadable entry
    _cached(tmp_path / "cache", SPEC, builds)(recs[2])
    assert builds == ["ct2", "ct2", "ct2"]
    _cached(tmp_path / "cache", SPEC, builds)(recs[2])
    assert builds == ["ct2", "ct2", "ct2"]


def test_data_module_decodes_each_volume_once(organ_cases, tmp_path, monkeypatch):
    """cache_rate=0 (nothing kept in memory): the second epoch and a second run read the cache, not the files."""
    import medeff.data.transforms as T
    from medeff.data.datamodule import MedeffDataModule

    index, _ = organ_cases
    reads: list[str] = []
    real = T.read_volume

    def counting(path):
        reads.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(T, "read_volume", counting)

    def module(cache_dir):
        dm = MedeffDataModule(str(index), kind="volume", task="segmentation", spatial_dims=3, num_classes=7,
                              patch_size=[8, 8, 8], preprocessing=SPEC, cache_rate=0.0, batch_size=1, seed=0,
                              augmentation={"crop": {"mode": "pos_neg", "num_samples": 1}, "flip_prob": 0.5},
                              cache_dir=cache_dir)
        dm.setup("fit")
        return dm

    dm = module(str(tmp_path / "cache"))
    for _ in dm.train_dataloader():
        pass
    assert sorted(reads) == ["ct1.nii.gz", "ct1_seg.nii.gz", "ct2.nii.gz", "ct2_seg.nii.gz"]
    for _ in dm.train_dataloader():  # epoch 2
        pass
    val = [b["image"] for b in dm.val_dataloader()]
    assert len(reads) == 6  # + the validation case, once
    dm2 = module(str(tmp_path / "cache"))
    for _ in dm2.train_dataloader():
        pass
    val2 = [b["image"] for b in dm2.val_dataloader()]
    assert len(reads) == 6
    plain = module(None)
    val_plain = [b["image"] for b in plain.val_dataloader()]
    for a, b, c in zip(val, val2, val_plain):
        torch.testing.assert_close(a.as_tensor() if hasattr(a, "as_tensor") else a, c.as_tensor()
                                   if hasattr(c, "as_tensor") else c)
        torch.testing.assert_close(b.as_tensor() if hasattr(b, "as_tensor") else b, c.as_tensor()
                                   if hasattr(c, "as_tensor") else c)


def test_folder_inputs_and_missing_files(organ_cases, tmp_path):
    """A DICOM-style folder is keyed by every file in it; a missing input gets the reader's error, not a raw OSError."""
    from medeff.data.cache import input_files
    from medeff.errors import ImageReadError

    folder = tmp_path / "series"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.dcm", "a.dcm", "sub/c.dcm"):
        (folder / name).write_bytes(b"x")
    assert [Path(f).relative_to(folder).as_posix() for f in input_files(str(folder))] == ["a.dcm", "b.dcm",
                                                                                          "sub/c.dcm"]
    fp = preprocessing_fingerprint(SPEC, spatial_dims=3, has_label=False, patch_size=None)
    before = cache_key({"image": str(folder)}, ["image"], fp)
    (folder / "sub" / "c.dcm").write_bytes(b"xy")
    assert cache_key({"image": str(folder)}, ["image"], fp) != before
    _, recs = organ_cases
    builds: list[str] = []
    missing = {**recs[0], "image": [str(tmp_path / "gone.nii.gz")]}
    with pytest.raises(ImageReadError, match="gone.nii.gz"):
        _cached(tmp_path / "cache", SPEC, builds)(missing)
