"""benchmarks/unet_quality.py: Dice per organ by hand, batch-norm statistics recomputed, and a tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "unet_quality.py"


@pytest.fixture(scope="module")
def uq():
    spec = importlib.util.spec_from_file_location("unet_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dice_per_organ_by_hand(uq):
    ref = torch.zeros(4, 4, dtype=torch.long)
    ref[:2, :2] = 1  # liver: 4 voxels
    pred = torch.zeros(4, 4, dtype=torch.long)
    pred[:1, :2] = 1  # 2 of them
    pred[3, 3] = 2  # a spleen voxel where there is none
    dice = uq.dice_per_organ(pred, ref)
    assert dice["liver"] == pytest.approx(2 * 2 / (2 + 4))
    assert dice["spleen"] == 0.0 and dice["lung"] == 1.0  # lung: absent in both


def test_precise_bn_sets_the_running_statistics_to_the_data(uq):
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1, bias=False), torch.nn.BatchNorm3d(2))
    torch.nn.init.ones_(model[0].weight)
    images = torch.arange(4 * 8, dtype=torch.float32).reshape(4, 1, 2, 2, 2)
    uq.precise_bn(model, images)
    assert not model.training
    # average of the two batches' means (each batch: 2 volumes)
    assert model[1].running_mean[0].item() == pytest.approx(images.mean().item())


def test_tiny_run_writes_both_networks(uq, tmp_path):
    out = tmp_path / "q.json"
    assert uq.main(["--preset", "tiny", "--output", str(out), "--log-every", "0"]) == 0
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"medeff", "monai"}
    assert report["flops"]["medeff"]["forward_flops"] < report["flops"]["monai"]["forward_flops"]
    for name, runs in report["runs"].items():
        assert len(runs) == 1 and set(runs[0]["dice"]) == set(uq.ORGANS)
        assert all(0.0 <= d <= 1.0 for d in runs[0]["dice"].values())
        assert report["summary"][name]["mean_dice"]["mean"] == pytest.approx(runs[0]["mean_dice"])
    assert "| liver |" in report["markdown"]


def test_dice_leaves_out_organs_absent_from_a_real_reference(uq):
    ref = torch.zeros(4, 4, dtype=torch.long)
    ref[0, 0] = 4
    pred = torch.zeros(4, 4, dtype=torch.long)
    pred[0, 0], pred[3, 3] = 4, 1  # liver right, a spleen voxel where the scan has none
    organs = {"spleen": 1, "liver": 4}
    assert uq.dice_per_organ(pred, ref, organs, present_only=True) == {"liver": 1.0}
    assert uq.dice_per_organ(pred, ref, organs) == {"spleen": 0.0, "liver": 1.0}


def test_patches_stay_inside_and_half_of_them_hold_an_organ(uq):
    x = torch.arange(10 * 12 * 8, dtype=torch.float32).reshape(1, 1, 10, 12, 8)
    y = torch.zeros(1, 1, 10, 12, 8, dtype=torch.long)
    y[0, 0, 9, 11, 7] = 3  # one organ voxel, in a corner: the window is clamped, not shifted out
    px, py = uq.sample_patches(x, y, [4, 4, 4], 6, torch.Generator().manual_seed(0))
    assert px.shape == (6, 1, 4, 4, 4) and py.shape == (6, 1, 4, 4, 4)
    assert all(int(py[k].max()) == 3 for k in (0, 2, 4))
    assert torch.equal(px[0], x[0, :, 6:, 8:, 4:])  # the patch is the volume's own window
    again, _ = uq.sample_patches(x, y, [4, 4, 4], 6, torch.Generator().manual_seed(0))
    assert torch.equal(px, again)  # same generator seed, same batches for both networks
    with pytest.raises(ValueError, match="smaller than the patch"):
        uq.sample_patches(x, y, [16, 4, 4], 1, torch.Generator())


def test_real_organ_volumes_are_aligned_with_their_label_maps(uq, shared_data):
    volumes = uq.load_real_organs(shared_data)
    for part in ("train", "test"):
        x, y = volumes[f"{part}_x"], volumes[f"{part}_y"]
        assert x.shape == y.shape and x.shape[:2] == (1, 1)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0  # HU window [-160, 240] scaled to [0, 1]
        assert int(y.max()) <= max(uq.REAL["organs"].values())  # only the pipeline's 7 organs survive the remap
        liver = y == uq.REAL["organs"]["liver"]
        assert int(liver.sum()) > 1000
        # soft tissue in the window: the liver is much brighter than the volume's mean, and a left-right flipped
        # label map (a wrong orientation) would not be
        assert float(x[liver].mean()) > float(x.mean()) + 0.2
        assert float(x[liver].mean()) > float(x[liver.flip(2)].mean()) + 0.05
    assert volumes["test_x"].shape[-1] < volumes["train_x"].shape[-1]  # the held-out series is the short DICOM one


def test_missing_real_data_names_the_folder(uq, tmp_path):
    with pytest.raises(FileNotFoundError, match="MEDEFF_SHARED_DATA"):
        uq.load_real_organs(tmp_path)
