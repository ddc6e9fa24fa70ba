"""Few-step segmentation training on phantom CT NIfTI, then sliding-window predict onto the input grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from .helpers import fast_overrides

from medeff.config import compose
from medeff.engine.predict import predict
from medeff.engine.train import train

SEG = ["experiment=organ_seg_3d", "data.patch_size=[16,16,16]", "data.batch_size=1",
       "data.preprocessing.spacing=[10.0,12.0,12.0]", "augmentation.crop.num_samples=2",
       "trainer.check_val_every_n_epoch=1"]


@pytest.fixture(scope="module")
def seg_run(organ_index, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("seg_run")
    cfg = compose("train", SEG + [f"data.index={organ_index}"] + fast_overrides(run_dir))
    return train(cfg)


def test_segmentation_training_logs_dice_per_label(seg_run):
    metrics = seg_run["metrics"]
    assert "val/dice" in metrics and "val/loss" in metrics
    for name in ("liver", "spleen", "kidney_left", "kidney_right", "lung", "spine"):
        assert f"val/dice_{name}" in metrics
    ckpt = torch.load(seg_run["last_checkpoint"], map_location="cpu", weights_only=True)
    meta = ckpt["medeff"]
    assert meta["task"] == "segmentation"
    assert meta["label_names"][:2] == ["background", "liver"] and len(meta["label_names"]) == 7
    assert meta["data"]["preprocessing"]["spacing"] == [10.0, 12.0, 12.0]
    assert meta["config"]["task"]["roi_size"] == [16, 16, 16]


def test_predict_writes_masks_on_the_input_grid(seg_run, organ_index, tmp_path):
    src = organ_index.parent / "ct2.nii.gz"
    out = tmp_path / "masks"
    res = predict(compose("predict", [f"ckpt={seg_run['last_checkpoint']}", f"input={src}", f"output_dir={out}",
                                      "device=cpu", "sliding_window.overlap=0.25", "case_ids.naming=input"]))
    mask_path = out / "ct2_seg.nii.gz"
    assert res["files"][0] == str(mask_path)
    src_img, mask = nib.load(src), nib.load(mask_path)
    assert mask.shape == src_img.shape
    np.testing.assert_allclose(mask.affine, src_img.affine, atol=1e-5)
    values = np.unique(np.asarray(mask.dataobj))
    assert set(values.tolist()) <= set(range(7))
    doc = json.loads((out / "predictions.json").read_text())
    counts = doc["cases"][0]["voxels_per_label"]
    assert sum(counts.values()) == int(np.prod(src_img.shape))


def test_predict_inverts_orientation_and_spacing_exactly(seg_run, organ_index, tmp_path, monkeypatch):
    """An identity 'network' that echoes a channel must give back the input's own geometry voxel for voxel."""
    import medeff.engine.predict as P

    class Echo(torch.nn.Module):
        def forward(self, x):  # label 1 where the windowed intensity is above 0.75 (HU 140: kidneys, spine)
            return torch.cat([0.75 - x, x - 0.75], dim=1)

    def fake_load(path, *, device, expect=None, **kwargs):
        net, meta = real_load(path, device=device, expect=expect)
        meta = dict(meta, label_names=["background", "bright"])
        return Echo(), meta

    real_load = P.load_model
    monkeypatch.setattr(P, "load_model", fake_load)
    src = organ_index.parent / "ct1.nii.gz"
    # nearest-neighbour label path: exact geometry; the default probability path is covered by test_predict_resample
    predict({"ckpt": seg_run["last_checkpoint"], "input": str(src), "output_dir": str(tmp_path), "device": "cpu",
             "case_ids": {"naming": "input"}, "resample": "labels"})
    mask = np.asarray(nib.load(tmp_path / "ct1_seg.nii.gz").dataobj)
    ct = np.asarray(nib.load(src).dataobj).astype(float)
    bright = (ct + 160) / 400 > 0.75  # the organ experiment's window [-160, 240] -> [0, 1]
    dice = 2 * (mask.astype(bool) & bright).sum() / (mask.astype(bool).sum() + bright.sum())
    flipped = bright[::-1, ::-1]
    dice_flipped = 2 * (mask.astype(bool) & flipped).sum() / (mask.astype(bool).sum() + flipped.sum())
    assert dice > 0.8, dice  # resampling to 10x12x12 mm and back blurs edges only
    assert dice_flipped < dice - 0.2, (dice, dice_flipped)  # a lost orientation flip would be caught


def test_joint_training_and_prediction(organ_index, tmp_path):
    """Joint U-Net: Dice and AUC logged; predict writes the mask and the case classification."""
    import csv

    cfg = compose("train", ["experiment=organ_seg_cls_joint", f"data.index={organ_index}", "data.patch_size=[16,16,16]",
                            "data.batch_size=1", "data.preprocessing.spacing=[10.0,12.0,12.0]",
                            "trainer.check_val_every_n_epoch=1", "trainer.limit_train_batches=1"]
                  + fast_overrides(tmp_path / "run"))
    result = train(cfg)
    assert {"val/dice", "val/dice_liver", "val/balanced_accuracy", "val/auc"} <= set(result["metrics"])
    meta = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)["medeff"]
    assert meta["task"] == "joint" and meta["class_names"] == ["normal", "abnormal"]
    from medeff.cli.main import main

    src = organ_index.parent / "ct0.nii.gz"
    out = tmp_path / "out"
    assert main(["predict", f"ckpt={result['last_checkpoint']}", f"input={src}", f"output_dir={out}",
                 "device=cpu", "case_ids.naming=input"]) == 0
    np.testing.assert_allclose(nib.load(out / "ct0_seg.nii.gz").affine, nib.load(src).affine, atol=1e-5)
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ["ct0"] and rows[0]["mask"].endswith("ct0_seg.nii.gz")
    assert rows[0]["decision"] in ("flag", "routine")


def test_predict_on_a_real_dicom_series_keeps_its_geometry(seg_run, shared_data, tmp_path):
    from medeff.io import read_image

    folder = shared_data / "ct_organs_totalsegmentator" / "example_ct_dicom"
    predict({"ckpt": seg_run["last_checkpoint"], "input": str(folder), "output_dir": str(tmp_path), "device": "cpu",
             "case_ids": {"naming": "input"}})
    mask = nib.load(tmp_path / "example_ct_dicom_seg.nii.gz")
    image = read_image(folder)
    assert mask.shape == image.shape[:3]
    np.testing.assert_allclose(mask.affine, image.affine_ras, atol=1e-4)
