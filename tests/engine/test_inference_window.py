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


# ---- padding of images smaller than the window -----------------------------------------------------------------

def _ct_like(shape=(1, 2, 20, 40, 26)) -> torch.Tensor:
    """Normalised 'CT': air (the clip minimum) at -1.2 (channel 0) / -0.8 (channel 1) around a brighter body."""
    g = torch.Generator().manual_seed(0)
    image = torch.empty(shape)
    image[:, 0], image[:, 1] = -1.2, -0.8
    body = (slice(None), slice(None), slice(2, -2), slice(6, -6), slice(5, -5))
    image[body] += 0.1 + 2 * torch.rand(image[body].shape, generator=g)
    return image


def _prepadded(image: torch.Tensor, roi, values) -> tuple[torch.Tensor, tuple]:
    """``image`` padded to ``roi`` (centred as MONAI) with one background value per channel, and the crop back."""
    size = image.shape[2:]
    lows = [max(r - n, 0) // 2 for n, r in zip(size, roi)]
    full = torch.empty(*image.shape[:2], *(max(n, r) for n, r in zip(size, roi)))
    for c, v in enumerate(values):
        full[:, c] = v
    crop = (slice(None), slice(None), *(slice(lo, lo + n) for lo, n in zip(lows, size)))
    full[crop] = image
    return full, crop


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_small_image_is_padded_with_background_not_zero(mode):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 5, padding=2), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, 3, 5, padding=2)).eval()
    image = _ct_like()  # 20 and 26 are no multiple of the 32 window and shorter than it
    roi = (32, 32, 32)
    padded, crop = _prepadded(image, roi, (-1.2, -0.8))
    ref = sliding_window(net, padded, roi_size=roi, overlap=0.5, mode=mode)[crop]
    ours = sliding_window(net, image, roi_size=roi, overlap=0.5, mode=mode)  # default pad: the channel minimum
    assert ours.shape == (1, 3, 20, 40, 26)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # the old zero padding differs at the border (the receptive field reaches into the padding)
    zero = sliding_window(net, image, roi_size=roi, overlap=0.5, mode=mode, pad=0)
    assert (zero[..., 0] - ref[..., 0]).abs().max() > 1e-3
    zero_ref = sliding_window(net, _prepadded(image, roi, (0.0, 0.0))[0], roi_size=roi, overlap=0.5, mode=mode)
    torch.testing.assert_close(zero, zero_ref[crop], rtol=1e-5, atol=1e-5)


def test_replicate_and_metatensor_padding():
    from monai.data import MetaTensor

    net = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    image = _ct_like()
    rep = sliding_window(net, image, roi_size=(32, 32, 32), pad="replicate")
    ref = torch.nn.functional.pad(image, (3, 3, 0, 0, 6, 6), mode="replicate")
    torch.testing.assert_close(rep, sliding_window(net, ref, roi_size=(32, 32, 32))[..., 6:26, :, 3:29])
    meta = sliding_window(net, MetaTensor(image), roi_size=(32, 32, 32))
    torch.testing.assert_close(torch.as_tensor(meta), sliding_window(net, image, roi_size=(32, 32, 32)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["zeros", float("nan"), True])
def test_bad_pad_is_a_config_error(bad):
    from medeff.errors import ConfigError

    net = torch.nn.Conv3d(1, 1, 1).eval()
    with pytest.raises(ConfigError, match="task.sw_pad"):
        sliding_window(net, torch.zeros(1, 1, 8, 8, 8), roi_size=(16, 16, 16), pad=bad)


def test_task_config_declares_the_pad_and_the_task_checks_it():
    from omegaconf import OmegaConf

    from medeff.config import conf_dir
    from medeff.engine.tasks import SegmentationTask
    from medeff.errors import ConfigError

    for name in ("segmentation", "joint"):
        assert OmegaConf.load(conf_dir() / "task" / f"{name}.yaml").sw_pad == "min"
    net = torch.nn.Conv3d(1, 2, 1)
    task = SegmentationTask(net, num_classes=2, roi_size=[8, 8, 8], sw_pad=-1.5)
    assert task.sw["pad"] == -1.5
    assert SegmentationTask(net, num_classes=2, roi_size=[8, 8, 8]).sw["pad"] == "min"
    with pytest.raises(ConfigError, match="task.sw_pad"):
        SegmentationTask(net, num_classes=2, roi_size=[8, 8, 8], sw_pad="edge")
