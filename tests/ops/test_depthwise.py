"""medeff.ops depthwise convolution: outputs and gradients equal torch's native depthwise conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medeff.ops import DepthwiseConvFunction, depthwise_conv
from medeff.ops import depthwise as dw

CONV = {2: F.conv2d, 3: F.conv3d}
CL = {2: torch.channels_last, 3: torch.channels_last_3d}


def _native(x, w, b, stride, padding):
    return CONV[x.dim() - 2](x, w, b, stride, padding, 1, w.shape[0])


# (spatial shape, kernel, stride, padding) -- odd sizes, anisotropic kernels/strides, padding 0..k-1
GRADCHECK_CASES = [
    ((3, 4, 5), 3, 1, 1),
    ((5, 4, 5), 5, 2, 2),
    ((2, 5, 4), (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ((4, 3, 5), 3, 1, 0),
    ((5, 6, 7), 3, 2, 0),
    ((7, 6, 5), 5, (2, 1, 2), (1, 4, 0)),
    ((4, 5), 3, 1, 1),
    ((5, 6), 5, 2, 2),
    ((5, 4), 3, (1, 2), 2),
]


@pytest.mark.parametrize("shape,kernel,stride,padding", GRADCHECK_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck_float64(shape, kernel, stride, padding, bias):
    n = len(shape)
    gen = torch.Generator().manual_seed(0)
    k = (kernel,) * n if isinstance(kernel, int) else kernel
    x = torch.randn(2, 3, *shape, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(3, 1, *k, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True) if bias else None
    inputs = (x, w) + ((b,) if bias else ())

    def fn(*args):
        return depthwise_conv(args[0], args[1], args[2] if bias else None, stride, padding)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    out = fn(*inputs)
    ref = _native(x, w, b, dw._as_tuple(stride, n, "s"), dw._as_tuple(padding, n, "p"))
    torch.testing.assert_close(out, ref)


# realistic float32 shapes (B, C, spatial, kernel, stride), including the slab path for grad_weight
FLOAT32_CASES = [
    ((2, 16, 33, 31, 32), 3, 1),
    ((2, 24, 17, 15, 16), 5, 1),
    ((2, 24, 17, 16, 15), 3, 2),
    ((1, 8, 9, 40, 40), (1, 3, 3), (1, 2, 2)),
    ((2, 32, 57, 55), 3, 1),
    ((2, 32, 28, 29), 5, 2),
]


@pytest.mark.parametrize("shape,kernel,stride", FLOAT32_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_float32_matches_native(shape, kernel, stride, channels_last, bias):
    n = len(shape) - 2
    gen = torch.Generator().manual_seed(1)
    k = (kernel,) * n if isinstance(kernel, int) else kernel
    stride_t = dw._as_tuple(stride, n, "s")
    padding = tuple(kk // 2 for kk in k)
    x0 = torch.randn(*shape, generator=gen)
    if channels_last:
        x0 = x0.contiguous(memory_format=CL[n])
    w0 = torch.randn(shape[1], 1, *k, generator=gen)
    b0 = torch.randn(shape[1], generator=gen) if bias else None
    results = []
    for fn in (_native, depthwise_conv):
        x = x0.clone(memory_format=torch.preserve_format).requires_grad_(True)
        w = w0.clone().requires_grad_(True)
        b = b0.clone().requires_grad_(True) if bias else None
        out = fn(x, w, b, stride_t, padding)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        out.backward(grad)
        results.append((out, x.grad, w.grad, b.grad if bias else None))
        if fn is depthwise_conv:
            assert out.is_contiguous(memory_format=CL[n] if channels_last else torch.contiguous_format)
            assert out.grad_fn is not None and "DepthwiseConvFunction" in type(out.grad_fn).__name__
            if any(st != 1 for st in stride_t):  # a strided layer's input gradient comes back in the input's layout
                assert x.grad.is_contiguous(memory_format=CL[n] if channels_last else torch.contiguous_format)
    (o1, gx1, gw1, gb1), (o2, gx2, gw2, gb2) = results
    torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx2, gx1, rtol=1e-4, atol=1e-4)
    # weight grads are sums over ~1e5 products: compare relative to their scale
    torch.testing.assert_close(gw2, gw1, rtol=1e-4, atol=1e-4 * gw1.abs().max().item())
    if bias:
        torch.testing.assert_close(gb2, gb1, rtol=1e-4, atol=1e-3)


def test_slab_path_is_used_and_exact(monkeypatch):
    """Force the slab loop on a small input and compare with the one-piece result."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 9, 7, 8, generator=gen)
    g = torch.randn(2, 4, 9, 7, 8, generator=gen)
    whole = dw.depthwise_grad_weight(x, g, (3, 3, 3), (1, 1, 1))
    monkeypatch.setattr(dw, "SLAB_MIN_ELEMENTS", 0)
    monkeypatch.setattr(dw, "SLAB_TARGET_ELEMENTS", 1)  # one output slice per slab
    calls = []
    real = dw._grad_weight_whole
    monkeypatch.setattr(dw, "_grad_weight_whole", lambda *a: calls.append(1) or real(*a))
    sliced = dw.depthwise_grad_weight(x, g, (3, 3, 3), (1, 1, 1))
    assert len(calls) == 9
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)


def test_only_needed_grads_are_computed(monkeypatch):
    calls = {"input": 0, "weight": 0}
    real_gi, real_gw = dw.depthwise_grad_input, dw.depthwise_grad_weight

    def count(name, fn):
        def wrapper(*a):
            calls[name] += 1
            return fn(*a)
        return wrapper

    monkeypatch.setattr(dw, "depthwise_grad_input", count("input", real_gi))
    monkeypatch.setattr(dw, "depthwise_grad_weight", count("weight", real_gw))
    x = torch.randn(1, 4, 6, 6, 6)
    w = torch.randn(4, 1, 3, 3, 3, requires_grad=True)
    depthwise_conv(x, w).sum().backward()  # first layer: x needs no grad
    assert calls == {"input": 0, "weight": 1}
    x.requires_grad_(True)
    w.requires_grad_(False)
    depthwise_conv(x, w).sum().backward()  # frozen weight
    assert calls == {"input": 1, "weight": 1}


def test_native_path_without_grad_and_errors():
    x = torch.randn(1, 4, 6, 6, 6)
    w = torch.randn(4, 1, 3, 3, 3)
    with torch.no_grad():
        out = depthwise_conv(x, w.requires_grad_(True))
    assert out.grad_fn is None
    torch.testing.assert_close(out, _native(x, w.detach(), None, (1, 1, 1), (1, 1, 1)))
    with pytest.raises(ValueError, match="weight"):
        depthwise_conv(x, torch.randn(4, 2, 3, 3, 3))
    with pytest.raises(ValueError, match="stride"):
        depthwise_conv(x, w, stride=(1, 2))
    assert DepthwiseConvFunction is dw.DepthwiseConvFunction


@pytest.mark.parametrize("size,expect_cl", [(24, True), (4, False)])
def test_strided_weight_grad_layout_follows_the_scratch_rule(monkeypatch, size, expect_cl):
    """Channels-last only when oneDNN's scratch (per weight element) is no larger than the copy of x it saves."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, size, size, size, generator=gen).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(16, 1, 3, 3, 3, generator=gen)
    g = torch.randn(2, 16, size // 2, size // 2, size // 2, generator=gen)
    assert (w.numel() * dw.CL_WEIGHT_GRAD_SCRATCH_BYTES <= x.numel() * 4) is expect_cl
    seen = []
    real = dw._aten_grad_weight
    monkeypatch.setattr(dw, "_aten_grad_weight", lambda *a: seen.append(a[-1]) or real(*a))
    got = dw.strided_grad_weight(g, x, w, (2, 2, 2), (1, 1, 1))
    assert seen == [torch.channels_last_3d if expect_cl else torch.contiguous_format]
    ref = torch.ops.aten.convolution_backward(g, x.contiguous(), w, None, [2] * 3, [1] * 3, [1] * 3, False,
                                              [0] * 3, 16, [False, True, False])[1]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    seen.clear()
    dw.strided_grad_weight(g, x.contiguous(), w, (2, 2, 2), (1, 1, 1))  # an NCDHW input is never copied
    assert seen == [torch.contiguous_format]
