"""``medeff.engine.inference.sliding_window``: same result as MONAI's ``sliding_window_inference``."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from medeff.engine.inference import sliding_window, window_slices
from medeff.models import create_model


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_blending_matches_monai(mode, overlap):
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    image = torch.randn(2, 2, 40, 37, 29)
    ours = sliding_window(net, image, roi_size=(16, 16, 16), sw_batch_size=3, overlap=overlap, mode=mode)
    ref = sliding_window_inference(image, [16, 16, 16], 3, net, overlap=overlap, mode=mode)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert len(window_slices((40, 37, 29), (16, 16, 16), overlap)) > 8


def test_unet_with_folded_norms_and_joint_and_small_image():
    torch.manual_seed(0)
    net = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, task="joint", width=0.25,
                       depth=0.25)
    image = torch.randn(1, 1, 40, 36, 32)
    with torch.no_grad():
        net.train()(torch.randn(2, 1, 32, 32, 32))  # running statistics away from their defaults
    net.eval()
    seg, cls = sliding_window(net, image, roi_size=(32, 32, 32), sw_batch_size=2, overlap=0.25, joint=True)
    ref_seg, ref_cls = sliding_window(net, image, roi_size=(32, 32, 32), sw_batch_size=2, overlap=0.25, joint=True,
                                      fold_norms=False)
    torch.testing.assert_close(seg, ref_seg, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cls, ref_cls, rtol=1e-4, atol=1e-4)
    assert seg.shape == (1, 2, 40, 36, 32) and cls.shape == (1, 2)
    assert all(p.grad is None for p in net.parameters()) and not net.training
    small = sliding_window(net, image[..., :24], roi_size=(32, 32, 32), overlap=0.25)  # MONAI pads: same shape back
    assert small.shape == (1, 2, 40, 36, 24)


def test_inference_context_on_cpu_is_inference_mode_in_float32():
    from medeff.engine.inference import inference_context

    net = torch.nn.Linear(4, 2)
    with inference_context("cpu"):
        assert torch.is_inference_mode_enabled()
        assert not torch.is_autocast_enabled("cpu")
        out = net(torch.ones(1, 4))
    assert out.dtype == torch.float32 and out.is_inference()
    assert not torch.is_inference_mode_enabled()
