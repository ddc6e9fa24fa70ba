"""Initialisation: the signal must survive the depth of the network (eval logits depend on the input)."""

from __future__ import annotations

import math

import pytest
import torch

from medeff.models import create_model


@pytest.mark.parametrize("spatial_dims,shape", [(2, (8, 1, 64, 64)), (3, (2, 1, 32, 32, 32))])
def test_eval_logits_depend_on_input_after_short_training(spatial_dims, shape):
    torch.manual_seed(0)
    net = create_model("efficientnet_b0", spatial_dims=spatial_dims, in_channels=1, num_classes=2)
    net.train()
    with torch.no_grad():
        for _ in range(10):  # let BatchNorm running statistics settle a little
            net(torch.randn(*shape))
    net.eval()
    with torch.no_grad():
        logits = net(torch.randn(4, *shape[1:]))
    spread = (logits - logits.mean(0)).abs().max().item()
    # with PyTorch default init the spread is ~3e-9 here; with the EfficientNet init ~1e-4 to 1e-3
    assert spread > 1e-5, f"eval logits barely depend on the input (spread {spread:.2e}): signal vanishes with depth"


def test_conv_init_follows_fan_out():
    net = create_model("efficientnet_b0", spatial_dims=2, in_channels=3, num_classes=10)
    w = net.conv_stem.weight  # (32, 3, 3, 3): fan_out = 9 * 32
    assert abs(w.std().item() - math.sqrt(2.0 / (9 * 32))) < 0.02
    assert torch.all(net.bn1.weight == 1) and torch.all(net.bn1.bias == 0)
    assert net.classifier.weight.abs().max().item() <= 1 / math.sqrt(10) + 1e-6
