"""Fused batch norm + SiLU (``medeff.layers.norm_act``): same outputs, gradients and running stats as torch's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medeff.benchmarks.worker import saved_bytes
from medeff.layers import BatchNormSiLUFunction, MemoryEfficientSiLU, norm_act
from medeff.layers.fused import can_fuse

BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _pair(dims, channels, momentum=0.1, dtype=torch.float32):
    torch.manual_seed(0)
    bn = BN[dims](channels, eps=1e-3, momentum=momentum).to(dtype)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.1, 0.1)
    return bn, copy.deepcopy(bn)


@pytest.mark.parametrize("shape", [(2, 5, 7), (2, 6, 9, 8), (2, 8, 7, 6, 5), (1, 16, 12, 12, 12)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_batchnorm_then_silu(shape, channels_last, momentum):
    dims = len(shape) - 2
    ref_bn, fused_bn = _pair(dims, shape[1], momentum)
    x0 = torch.randn(*shape) * 3 + 1
    if channels_last and dims in (2, 3):
        x0 = x0.contiguous(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    g = torch.randn(shape)
    results = []
    for bn, fn in ((ref_bn, lambda b, x: nn.SiLU()(b(x))), (fused_bn, lambda b, x: norm_act(b, nn.SiLU(), x))):
        for _ in range(2):  # two steps: running stats and num_batches_tracked evolve alike
            x = x0.clone(memory_format=torch.preserve_format).requires_grad_(True)
            bn.zero_grad()
            out = fn(bn, x)
            out.backward(g)
        results.append((out, x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var,
                        bn.num_batches_tracked))
    assert results[1][0].grad_fn is not None and "BatchNormSiLU" in type(results[1][0].grad_fn).__name__
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gradcheck_float64():
    bn, _ = _pair(3, 3, dtype=torch.float64)
    x = torch.randn(2, 3, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    w = bn.weight.detach().clone().requires_grad_(True)
    b = bn.bias.detach().clone().requires_grad_(True)

    def fn(x, w, b):  # momentum 0: the running statistics stay put during gradcheck's repeated calls
        return BatchNormSiLUFunction.apply(x, w, b, bn.running_mean, bn.running_var, 0.0, 1e-3)

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_keeps_less_for_backward():
    bn, _ = _pair(3, 8)
    x = torch.randn(2, 8, 8, 8, 8, requires_grad=True)
    plain = saved_bytes(nn.Sequential(bn, nn.SiLU()), x)

    class Fused(nn.Module):
        def forward(self, t):
            return norm_act(bn, MemoryEfficientSiLU(), t)

    assert saved_bytes(Fused(), x) < 0.6 * plain  # x only, not x and the normalised tensor


def test_fallback_in_eval_no_grad_and_other_modules():
    bn, _ = _pair(3, 4)
    x = torch.randn(2, 4, 3, 3, 3)
    assert can_fuse(bn, nn.SiLU(), x)
    assert not can_fuse(bn, nn.ReLU(), x) and not can_fuse(nn.GroupNorm(2, 4), nn.SiLU(), x)
    with torch.no_grad():
        assert not can_fuse(bn, nn.SiLU(), x)
    bn.eval()
    assert not can_fuse(bn, nn.SiLU(), x)
    torch.testing.assert_close(norm_act(bn, nn.SiLU(), x), nn.functional.silu(bn(x)))
