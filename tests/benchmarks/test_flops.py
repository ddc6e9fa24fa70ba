"""FLOPs in ``medeff bench``: a hand count for one convolution, equal work of the classifier comparisons, and the
documented 22.6 vs 68.9 GFLOPs of the 96^3 U-Nets (counted at 32^3, where every level has exactly 1/27 of the
voxels)."""

from __future__ import annotations

import pytest
import torch

from medeff.benchmarks import TRAIN_STEP_FACTOR, forward_flops, side_flops
from medeff.benchmarks.runner import flops_per_time, work_ratios

UNET = {"builder": "medeff", "kwargs": {"name": "efficientnet_b0", "task": "segmentation"}}
MONAI_UNET = {"builder": "monai_flexible_unet", "kwargs": {"backbone": "efficientnet-b0"}}


def _spec(size, batch=1, task="segmentation"):
    return {"batch": batch, "channels": 1, "size": list(size), "classes": 2, "task": task}


def test_one_convolution_matches_a_hand_count():
    conv = torch.nn.Conv3d(2, 4, 3, padding=1)
    # every one of the 4 x 8^3 outputs takes 2 x 3^3 multiply-adds (2 FLOPs each); the bias is not counted
    assert forward_flops(conv, (1, 2, 8, 8, 8)) == 4 * 8**3 * 2 * 27 * 2
    assert forward_flops(conv, (3, 2, 8, 8, 8)) == 3 * forward_flops(conv, (1, 2, 8, 8, 8))
    assert conv.training  # the count leaves the mode as it was


def test_side_flops_counts_on_meta_and_train_step_is_three_forwards():
    flops = side_flops({"builder": "medeff", "kwargs": {"name": "efficientnet_b0"}},
                       _spec((32, 32, 32), batch=2, task="classification"))
    assert flops["flops_counted_on"] == "meta" and flops["forward_flops"] > 0
    assert flops["train_step_flops"] == TRAIN_STEP_FACTOR * flops["forward_flops"] == 3 * flops["forward_flops"]


def test_classifier_comparisons_are_equal_work():
    spec = _spec((32, 32, 32), batch=2, task="classification")
    medeff = side_flops({"builder": "medeff", "kwargs": {"name": "efficientnet_b0"}}, spec)
    monai = side_flops({"builder": "monai_efficientnet_bn", "kwargs": {"model_name": "efficientnet-b0"}}, spec)
    assert medeff["forward_flops"] == monai["forward_flops"]


def test_unet_flops_match_the_documented_scale():
    spec = _spec((32, 32, 32))
    medeff = side_flops(UNET, spec)["forward_flops"]
    monai = side_flops(MONAI_UNET, spec)["forward_flops"]
    # docs/benchmarks.md: 22.6 vs 68.9 GFLOPs per forward at 1x1x96^3 (27x the voxels of 32^3)
    assert 27 * medeff / 1e9 == pytest.approx(22.6, rel=0.02)
    assert 27 * monai / 1e9 == pytest.approx(68.9, rel=0.02)
    assert 0.30 < medeff / monai < 0.36
    wide = side_flops({"builder": "medeff", "kwargs": {**UNET["kwargs"], "decoder_channels": [256, 128, 64, 32, 16]}},
                      spec)["forward_flops"]
    assert wide > monai > medeff  # FlexibleUNet's widths, without its 1x1 halving of the upsampled input


def test_time_per_gflop_and_work_ratios():
    side = flops_per_time({"forward_flops": 2e9, "train_step_flops": 6e9}, median_s=1.5)
    assert side["ms_per_gflop"] == pytest.approx(250.0)
    ref = {"forward_flops": 4e9}
    assert work_ratios(side, ref, 0.4) == {"flops_ratio": 0.5, "per_flop_ratio": pytest.approx(0.8)}
    assert work_ratios(side, {}, 0.4) == {"flops_ratio": None, "per_flop_ratio": None}
    assert flops_per_time(None, 1.0) == {}
