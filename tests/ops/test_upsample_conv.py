"""Polyphase upsample + convolution (``medeff.ops.upsample_conv``): the function of ``conv(cat(upsample(x), skip))``
with its gradients, the per-axis plans, and the checks that decide where it applies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medeff.ops import Conv3d
from medeff.ops.upsample_conv import axis_plan, nearest_scale, phase_weight, polyphase_ready, upsample_conv

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _reference(x, weight, bias, scale, skip):
    up = F.interpolate(x, scale_factor=tuple(float(s) for s in scale), mode="nearest")
    if skip is not None:
        up = torch.cat([up, skip], dim=1)
    return _CONV[x.dim() - 2](up, weight, bias, padding=[k // 2 for k in weight.shape[2:]])


@pytest.mark.parametrize(("scale", "kernel", "skip_channels"), [
    ((2, 2, 2), (3, 3, 3), 0),
    ((2, 2, 2), (3, 3, 3), 3),
    ((1, 2, 2), (1, 3, 3), 2),  # anisotropic level: no upsampling and a 1-tap kernel along the first axis
    ((2, 1, 2), (3, 3, 5), 0),  # a kernel of 5, an axis convolved without upsampling
    ((2, 2), (3, 3), 4),
    ((3, 2), (3, 3), 1),  # factor 3
    ((2,), (3,), 0),
    ((2,), (1,), 2),  # 1-tap kernel over an upsampled axis
])
def test_same_function_and_gradients_as_upsample_then_conv(scale, kernel, skip_channels):
    torch.manual_seed(0)
    dims = len(scale)
    size = [3 + i for i in range(dims)]
    x = torch.randn(2, 5, *size, dtype=torch.float64, requires_grad=True)
    skip = (torch.randn(2, skip_channels, *[s * n for s, n in zip(scale, size)], dtype=torch.float64,
                        requires_grad=True) if skip_channels else None)
    weight = torch.randn(4, 5 + skip_channels, *kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    inputs = [t for t in (x, weight, bias, skip) if t is not None]
    ref = _reference(x, weight, bias, scale, skip)
    out = upsample_conv(x, weight, bias, scale=scale, skip=skip)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(1, 1, 6, 4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, w: upsample_conv(a, w, scale=(2, 2, 2), skip=b), (x, skip, weight))


def test_no_bias_and_float32_close_to_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 10, 10, 10)
    weight = torch.randn(6, 8, 3, 3, 3) * 0.1
    torch.testing.assert_close(upsample_conv(x, weight, scale=(2, 2, 2)), _reference(x, weight, None, (2, 2, 2), None),
                               rtol=1e-4, atol=1e-4)


def test_channels_last_input_gives_channels_last_output():
    x = torch.randn(2, 8, 12, 12, 12).contiguous(memory_format=torch.channels_last_3d)
    skip = torch.randn(2, 4, 24, 24, 24).contiguous(memory_format=torch.channels_last_3d)
    weight = torch.randn(6, 12, 3, 3, 3)
    for s, w in ((None, weight[:, :8]), (skip, weight)):
        out = upsample_conv(x, w, scale=(2, 2, 2), skip=s)
        assert out.is_contiguous(memory_format=torch.channels_last_3d) and not out.is_contiguous()


def test_axis_plan_of_the_decoder_case():
    plan = axis_plan(2, 3)  # even output 2i reads x[i-1], x[i]; odd output 2i+1 reads x[i], x[i+1]
    assert plan.taps == 2 and plan.pad == (1, 1) and plan.shifts == (0, 1)
    assert plan.mix == (((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1)))
    plain = axis_plan(1, 3)
    assert plain.taps == 3 and plain.pad == (1, 1) and plain.shifts == (0,)
    with pytest.raises(ValueError, match="odd kernel"):
        axis_plan(2, 4)


def test_phase_weight_sums_taps():
    weight = torch.arange(3.0).reshape(1, 1, 3)  # taps w0=0, w1=1, w2=2
    phases = phase_weight(weight, [axis_plan(2, 3)])
    assert phases.shape == (2, 1, 2)
    assert phases[0, 0].tolist() == [0.0, 3.0] and phases[1, 0].tolist() == [1.0, 2.0]


def test_nearest_scale():
    assert nearest_scale((4, 5), (8, 5)) == (2, 1)
    assert nearest_scale((4, 5), (9, 10)) is None  # not an integer multiple
    assert nearest_scale((4,), (8, 8)) is None
    assert nearest_scale((0,), (0,)) is None


def test_polyphase_ready_only_for_plain_zero_padded_convolutions():
    assert polyphase_ready(nn.Conv3d(4, 4, 3, padding=1))
    assert polyphase_ready(Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1)))
    assert polyphase_ready(nn.Conv2d(4, 4, 3, padding=1, bias=False))
    assert not polyphase_ready(nn.Conv3d(4, 4, 3, padding=0))  # not "same"
    assert not polyphase_ready(nn.Conv3d(4, 4, 3, padding=1, stride=2))
    assert not polyphase_ready(nn.Conv3d(4, 4, 3, padding=2, dilation=2))
    assert not polyphase_ready(nn.Conv3d(4, 4, 3, padding=1, groups=4))
    assert not polyphase_ready(nn.Conv3d(4, 4, 3, padding=1, padding_mode="reflect"))
    assert not polyphase_ready(nn.Conv2d(4, 4, 3, padding="same"))
    assert not polyphase_ready(nn.Conv2d(4, 4, 2, padding=1))  # even kernel

    class Standardised(nn.Conv2d):  # a subclass that changes the forward: the rewrite would bypass it
        def forward(self, x):
            return super().forward(x) * 2

    assert not polyphase_ready(Standardised(4, 4, 3, padding=1))
    assert not polyphase_ready(nn.Linear(4, 4))


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(weight=torch.zeros(2, 5, 3, 3, 3)), "input channels"),
    (dict(skip=torch.zeros(1, 1, 8, 8, 7)), "skip has size"),
    (dict(scale=(2, 2)), "one scale per axis"),
])
def test_bad_arguments_are_named(kwargs, match):
    args = dict(weight=torch.zeros(2, 4 + ("skip" in kwargs), 3, 3, 3), skip=None, scale=(2, 2, 2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        upsample_conv(torch.zeros(1, 4, 4, 4, 4), args["weight"], scale=args["scale"], skip=args["skip"])
