"""EfficientNet-Lite0..4: the published architecture (no squeeze-excitation, ReLU6, stem/head and first/last stage
not scaled) in 2D and 3D, every task, with feature_info."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medeff.models import create_model
from medeff.models.blocks import SqueezeExcite

from .helpers import meta_model, zero_model


def test_lite0_parameter_count_is_published():
    assert sum(p.numel() for p in meta_model("efficientnet_lite0").parameters()) == 4_652_008


@pytest.mark.parametrize("name", [f"efficientnet_lite{i}" for i in range(5)])
def test_lite_structure(name):
    model = meta_model(name)
    assert not any(isinstance(m, SqueezeExcite) for m in model.modules())
    acts = {type(m) for m in model.modules() if isinstance(m, (nn.ReLU6, nn.SiLU, nn.ReLU))}
    assert acts == {nn.ReLU6}
    assert model.conv_stem.out_channels == 32 and model.conv_head.out_channels == 1280
    assert len(model.blocks[0]) == 1 and len(model.blocks[-1]) == 1


def test_lite4_scales_the_middle_stages():
    model = meta_model("efficientnet_lite4")
    assert [len(s) for s in model.blocks] == [1, 4, 4, 6, 6, 8, 1]
    assert model.feature_info.channels() == [24, 32, 56, 160, 448]


@pytest.mark.parametrize("task", ["classification", "segmentation", "joint"])
def test_lite_3d_tasks(task):
    model = zero_model("efficientnet_lite0", spatial_dims=3, in_channels=1, num_classes=2, task=task)
    x = torch.zeros(1, 1, 32, 32, 32)
    with torch.no_grad():
        out = model(x)
    if task == "classification":
        assert out.shape == (1, 2)
    elif task == "segmentation":
        assert out.shape == (1, 2, 32, 32, 32)
    else:
        assert out[0].shape == (1, 2, 32, 32, 32) and out[1].shape == (1, 2)
    enc = model if task == "classification" else model.encoder
    assert enc.layer_config.act == "relu6"


def test_lite_activation_can_be_overridden():
    with torch.device("meta"):
        model = create_model("efficientnet_lite0", act="silu")
    assert not any(isinstance(m, nn.ReLU6) for m in model.modules())
