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
