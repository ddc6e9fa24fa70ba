"""Layer factories and the fast depthwise 3D convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medeff.errors import ConfigError
from medeff.layers import DepthwiseConv3dFunction, FastDepthwiseConv3d, make_conv, make_norm


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 3, 3), (5, 5, 5)])
def test_fast_depthwise_matches_conv3d(kernel):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 7, 8, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 1, *kernel, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 6, 7, 8, 9, dtype=torch.float64)
    out = DepthwiseConv3dFunction.apply(x, w)
    gx, gw = torch.autograd.grad(out, (x, w), g)
    ref = F.conv3d(x, w, padding=tuple(k // 2 for k in kernel), groups=6)
    rx, rw = torch.autograd.grad(ref, (x, w), g)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


def test_fast_depthwise_gradcheck_and_module_fallback():
    x = torch.randn(1, 2, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(DepthwiseConv3dFunction.apply, (x, w))
    dw = make_conv(3, 8, 8, 3, 1, groups=8, fast_depthwise=True)
    assert isinstance(dw, FastDepthwiseConv3d) and dw._eligible()
    strided = make_conv(3, 8, 8, 3, 2, groups=8, fast_depthwise=True)
    assert not strided._eligible()  # stride 2 takes nn.Conv3d's path
    assert strided(torch.randn(1, 8, 9, 9, 9)).shape == (1, 8, 5, 5, 5)
    assert type(make_conv(3, 8, 16, 3, fast_depthwise=True)) is torch.nn.Conv3d  # not depthwise


def test_same_padding_keeps_size_and_same_tf_matches_tf_rule():
    for dims in (1, 2, 3):
        conv = make_conv(dims, 2, 4, 3, 2)
        assert conv(torch.randn(1, 2, *(9,) * dims)).shape[2:] == (5,) * dims
    tf = make_conv(2, 1, 1, 3, 2, padding="same_tf")
    torch.nn.init.ones_(tf.weight)
    out = tf(torch.ones(1, 1, 4, 4))
    # TF "SAME" on size 4, k3, s2 pads 0 before and 1 after: first output sums a full 3x3 window
    assert out.shape[2:] == (2, 2) and out[0, 0, 0, 0].item() == 9.0 and out[0, 0, 1, 1].item() == 4.0
    with pytest.raises(ConfigError, match="same_tf"):
        make_conv(2, 1, 1, 3, padding="valid")


def test_make_norm_specs():
    assert make_norm("batch", 3, 8).eps == 1e-3
    assert make_norm(("batch", {"eps": 1e-5}), 2, 8).eps == 1e-5
    group = make_norm(("group", {"num_groups": 8}), 3, 12)
    assert group.num_groups == 4  # largest divisor of 12 not above 8 that also divides 8
    with pytest.raises(ValueError, match="name or a"):
        make_norm(("group", 8), 3, 8)
