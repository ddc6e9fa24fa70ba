"""Batch-1 dense 3D convolutions kept on oneDNN (``medeff.ops.dense``): same results as ``F.conv3d``, the slow path
avoided only where aten's size rule would send the layer to its reference kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from medeff.layers import make_conv
from medeff.ops import Conv3d, conv3d
from medeff.ops.dense import ONEDNN_MIN_ELEMENTS, bf16_needs_float32, extra_channels


def _kernels(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages() if "slow_conv3d" in e.key or "mkldnn_convolution" in e.key}


def test_extra_channels_only_under_the_batch_one_rule():
    w3 = torch.zeros(32, 32, 3, 3, 3)
    x = torch.zeros(1, 32, 24, 24, 24)  # 32 * 24 * 24 = 18432 <= 20480
    assert extra_channels(x, w3) == ONEDNN_MIN_ELEMENTS // (24 * 24) + 1 - 32 == 4
    assert extra_channels(torch.zeros(2, 32, 24, 24, 24), w3) == 0  # batch 2: aten already uses oneDNN
    assert extra_channels(torch.zeros(1, 48, 24, 24, 24), torch.zeros(8, 48, 3, 3, 3)) == 0  # above the rule
    assert extra_channels(x, torch.zeros(32, 32, 1, 1, 1)) == 0  # 1x1x1: no faster on oneDNN
    assert extra_channels(x, torch.zeros(32, 32, 5, 5, 5)) == 0  # 5x5 last axes: aten picks oneDNN itself
    assert extra_channels(torch.zeros(1, 16, 12, 12, 12), torch.zeros(16, 16, 3, 3, 3)) == 0  # would need 8x
    assert extra_channels(x.double(), w3.double()) == 0
    assert extra_channels(x, w3, groups=2) == 0


@pytest.mark.parametrize("shape,stride,bias", [((1, 32, 24, 24, 24), 1, True), ((1, 40, 20, 22, 11), 2, False)])
def test_same_outputs_and_gradients_as_conv3d(shape, stride, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(12, shape[1], 3, 3, 3, requires_grad=True)
    b = torch.randn(12, requires_grad=True) if bias else None
    assert extra_channels(x, w) > 0
    out = conv3d(x, w, b, stride, 1)
    ref = F.conv3d(x, w, b, stride, 1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(out)
    inputs = (x, w) if b is None else (x, w, b)
    for a, r in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        assert a.shape == r.shape
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-3)


def test_the_padded_layer_runs_on_onednn_where_plain_conv3d_does_not():
    x = torch.randn(1, 32, 24, 24, 24)
    w = torch.randn(32, 32, 3, 3, 3)
    plain = _kernels(lambda: F.conv3d(x, w, None, 1, 1))
    ours = _kernels(lambda: conv3d(x, w, None, 1, 1))
    # the premise: aten sends this batch-1 layer to its reference kernel (if a torch upgrade changes the rule, this
    # fails and medeff.ops.dense can go)
    assert any("slow_conv3d" in k for k in plain), sorted(plain)
    assert not any("slow_conv3d" in k for k in ours) and any("mkldnn" in k for k in ours)


def test_models_build_it_for_dense_3d_layers_with_the_plain_state_dict():
    conv = make_conv(3, 8, 16, 3, bias=True)
    assert type(conv) is Conv3d and isinstance(conv, torch.nn.Conv3d)
    plain = torch.nn.Conv3d(8, 16, 3, padding=1, bias=True)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 8, 20, 20, 20)
    torch.testing.assert_close(conv(x), plain(x), rtol=1e-4, atol=1e-4)
    assert type(make_conv(2, 8, 16, 3)) is torch.nn.Conv2d


def test_bf16_layers_shorter_than_their_kernel_run_in_float32():
    """oneDNN's bfloat16 3D backward at random gave non-finite weight gradients for inputs shorter than the kernel:
    conv3d computes those layers in float32 and hands back bfloat16."""
    w = torch.zeros(8, 16, 3, 3, 3)
    small, large = torch.zeros(2, 16, 2, 2, 2), torch.zeros(2, 16, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bf16_needs_float32(small, w)
        assert not bf16_needs_float32(large, w)
        with torch.no_grad():
            assert not bf16_needs_float32(small, w)  # inference: no backward to protect
    assert not bf16_needs_float32(small, w)  # float32 outside autocast
    assert bf16_needs_float32(small.bfloat16(), w.bfloat16())
    assert not bf16_needs_float32(torch.zeros(2, 16, 2, 2), torch.zeros(8, 16, 3, 3))  # 2D is not affected

    torch.manual_seed(0)
    conv = make_conv(3, 432, 128, 3)  # the deepest decoder layer of a U-Net on 32^3 patches
    assert isinstance(conv, Conv3d)
    for _ in range(30):
        x = torch.randn(2, 432, 2, 2, 2, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        assert out.dtype == torch.bfloat16
        with torch.autocast("cpu", enabled=False):
            expected = F.conv3d(x.float(), conv.weight, None, 1, 1).to(torch.bfloat16)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        conv.weight.grad = None
        out.float().square().mean().backward()
        assert torch.isfinite(conv.weight.grad).all() and torch.isfinite(x.grad).all()
