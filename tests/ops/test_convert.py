"""convert_depthwise / DepthwiseConv: drop-in replacement for depthwise nn.Conv2d/3d."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medeff.ops import DepthwiseConv, convert_depthwise, is_convertible


def _tiny_model(spatial_dims: int) -> nn.Module:
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    norm = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
    k_aniso = (1, 3, 3) if spatial_dims == 3 else (1, 3)
    return nn.Sequential(
        conv(2, 8, 3, padding=1),
        conv(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise
        norm(8),
        nn.SiLU(),
        conv(8, 8, 5, stride=2, padding=2, groups=8, bias=True),  # depthwise, strided, bias
        conv(8, 8, k_aniso, padding=0, groups=8),  # depthwise, padding 0 (MONAI style)
        conv(8, 16, 1),
        conv(16, 16, 3, padding=1, groups=4),  # grouped, not depthwise
        conv(16, 16, 3, padding=2, dilation=2, groups=16),  # dilated: left alone
    )


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_convert_gives_identical_outputs_and_grads(spatial_dims, channels_last):
    torch.manual_seed(0)
    ref = _tiny_model(spatial_dims)
    fast = convert_depthwise(copy.deepcopy(ref))
    assert [type(m).__name__ for m in fast if isinstance(m, DepthwiseConv)] == ["DepthwiseConv"] * 3
    assert isinstance(fast[7], nn.Conv3d if spatial_dims == 3 else nn.Conv2d)
    assert isinstance(fast[8], nn.Conv3d if spatial_dims == 3 else nn.Conv2d)
    shape = (2, 2, 9, 14, 13) if spatial_dims == 3 else (2, 2, 19, 17)
    x = torch.randn(*shape)
    if channels_last:
        fmt = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
        x = x.contiguous(memory_format=fmt)
        ref, fast = ref.to(memory_format=fmt), fast.to(memory_format=fmt)
    outs = []
    for model in (ref, fast):
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        out.square().mean().backward()
        outs.append((out, xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    (o1, gx1, g1), (o2, gx2, g2) = outs
    torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx2, gx1, rtol=1e-4, atol=1e-6)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-4 * g1[name].abs().max().item() + 1e-7)
    # eval / no-grad path (native op) agrees too
    ref.eval()
    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-5)


def test_state_dicts_interchangeable_and_parameters_shared():
    torch.manual_seed(0)
    native = nn.Conv3d(6, 6, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), groups=6, bias=False)
    fast = DepthwiseConv(6, (1, 3, 3), stride=(1, 2, 2), spatial_dims=3)
    assert fast.state_dict().keys() == native.state_dict().keys() == {"weight"}
    assert fast.weight.shape == native.weight.shape == (6, 1, 1, 3, 3)
    fast.load_state_dict(native.state_dict())
    x = torch.randn(1, 6, 3, 10, 9)
    torch.testing.assert_close(fast(x), native(x))
    native.load_state_dict(DepthwiseConv(6, (1, 3, 3), stride=(1, 2, 2), spatial_dims=3).state_dict())
    # a whole model's state dict loads either way
    model = _tiny_model(3)
    converted = convert_depthwise(copy.deepcopy(model))
    assert converted.state_dict().keys() == model.state_dict().keys()
    model.load_state_dict(converted.state_dict())
    converted.load_state_dict(model.state_dict())
    # parameters are shared, not copied, so an optimizer made before conversion still updates them
    opt_model = _tiny_model(3)
    params_before = {id(p) for p in opt_model.parameters()}
    convert_depthwise(opt_model)
    assert {id(p) for p in opt_model.parameters()} == params_before


def test_convert_single_conv_and_rejections():
    conv = nn.Conv2d(4, 4, 3, padding="same", groups=4)
    fast = convert_depthwise(conv)
    assert isinstance(fast, DepthwiseConv) and fast.padding == (1, 1) and fast.weight is conv.weight
    assert not is_convertible(nn.Conv2d(4, 8, 3, groups=4))  # channel multiplier 2
    assert not is_convertible(nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"))
    assert not is_convertible(nn.Conv2d(4, 4, 3, padding=3, groups=4))  # padding > k - 1
    assert not is_convertible(nn.ConvTranspose2d(4, 4, 3, groups=4))

    class Custom(nn.Conv2d):
        pass

    assert not is_convertible(Custom(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match="padding"):
        DepthwiseConv(4, 3, padding=4, spatial_dims=2)
    with pytest.raises(ValueError, match="spatial_dims"):
        DepthwiseConv(4, 3, spatial_dims=1)


def test_monai_efficientnet_b0_3d_converts():
    """The peer's b0 3D (16 depthwise convs, TF-style separate padding) converts; float64 grads match the native run."""
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    ref = monai_nets.EfficientNetBN("efficientnet-b0", spatial_dims=3, in_channels=1, num_classes=2, pretrained=False)
    ref = ref.double()
    fast = convert_depthwise(copy.deepcopy(ref))
    assert sum(isinstance(m, DepthwiseConv) for m in fast.modules()) == 16
    x = torch.randn(2, 1, 32, 32, 32, dtype=torch.float64)
    for model in (ref, fast):
        model.train()
        model.zero_grad()
        torch.manual_seed(1)  # same dropout / drop-connect draws on both sides
        torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 0])).backward()
    for (name, p1), (_, p2) in zip(ref.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-6, atol=1e-6 * p1.grad.abs().max().item() + 1e-9,
                                   msg=name)
