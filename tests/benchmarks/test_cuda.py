"""GPU checks (``pytest -m gpu``, run by ``benchmarks/gpu_check.sh``): native kernels on CUDA, AMP train steps, and
``torch.compile`` of whole models without graph breaks. They skip without a CUDA device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medeff.models import create_model
from medeff.ops import FastDepthwiseConv3d

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (pytest -m gpu on a GPU)")]


def test_depthwise_uses_the_native_convolution_on_cuda():
    torch.manual_seed(0)
    conv = FastDepthwiseConv3d(8, 8, 3, padding=1, groups=8).cuda()
    x = torch.randn(2, 8, 12, 12, 12, device="cuda", requires_grad=True)
    out = conv(x)
    assert "DepthwiseConvFunction" not in type(out.grad_fn).__name__
    ref = torch.nn.Conv3d(8, 8, 3, padding=1, groups=8).cuda()
    ref.load_state_dict(conv.state_dict())
    torch.testing.assert_close(out, ref(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_amp_train_step_on_cuda(dtype, task):
    """AMP train steps as a trainer runs them: finite loss, and (float16) the gradient scaler backs off from any
    overflowing first scale until a step's unscaled gradients are finite and the weights move.

    64^3, not 32^3: at 32^3 a B0's last two stages are 1x1x1, so with a batch of 2 each batch norm there sees two
    values per channel, and its backward multiplies the gradient by up to 1/sqrt(eps) (about 30) per norm; over
    those blocks that passes float16's range at any loss scale (seen on an H200 and on CPU, classification only).
    That is a property of batch norm on degenerate batches, not of AMP."""
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, task=task).cuda()
    x = torch.randn(2, 1, 64, 64, 64, device="cuda")
    y = torch.randint(0, 2, (2, 64, 64, 64) if task == "segmentation" else (2,), device="cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(20):  # the scale halves on each overflow: 20 steps reach any usable scale from 2**16
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        assert torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        scaler.step(optimizer)
        scaler.update()
        if finite:
            break
    assert finite, f"gradients still overflow at scale {scaler.get_scale()}"
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_compile_fullgraph_on_cuda_matches_eager(task):
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, task=task).cuda().eval()
    x = torch.randn(1, 1, 32, 32, 32, device="cuda")
    compiled = torch.compile(model, fullgraph=True)  # fails on any graph break (e.g. a custom CPU op)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-3, atol=1e-3)
    model.train()  # a batch of 2 at 64^3: train-mode batch norm needs more than one value per channel
    out = torch.compile(model, fullgraph=True)(torch.randn(2, 1, 64, 64, 64, device="cuda"))
    out.float().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_polyphase_decoder_on_cuda_matches_the_plain_path(dtype):
    """``decoder_polyphase=True`` on CUDA (``"auto"`` keeps GPUs plain) computes the plain path's function: both
    are compared with a float64 run of the plain path, and the polyphase error may not exceed the plain one's by
    more than rounding noise (cuDNN runs float32 convolutions in TF32, AMP in bfloat16: neither path is exact)."""
    torch.manual_seed(0)
    kw = dict(spatial_dims=3, in_channels=1, num_classes=2, task="segmentation", drop_path_rate=0.0, dropout=0.0)
    plain = create_model("efficientnet_b0", decoder_polyphase=False, **kw).cuda().eval()
    poly = create_model("efficientnet_b0", decoder_polyphase=True, **kw).cuda().eval()
    poly.load_state_dict(plain.state_dict())
    exact = create_model("efficientnet_b0", decoder_polyphase=False, **kw).cuda().double().eval()
    exact.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 64, 64, 64, device="cuda")
    with torch.no_grad():
        ref = exact(x.double())
        errors = {}
        for name, model in (("plain", plain), ("poly", poly)):
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(x).double()
            errors[name] = (out - ref).abs().mean().item()
    scale = ref.abs().mean().item()
    assert errors["poly"] <= 1.5 * errors["plain"] + 1e-4 * scale, (errors, scale)
    # gradients in training mode, against float64 likewise
    grads = {}
    for name, model in (("plain", plain), ("poly", poly), ("exact", exact)):
        model.train().zero_grad(set_to_none=True)
        inp = x.double() if name == "exact" else x
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None and name != "exact"):
            out = model(inp).double()
        out.square().mean().backward()
        grads[name] = model.seg_head.conv.weight.grad.double()
    g_err = {k: (grads[k] - grads["exact"]).norm().item() for k in ("plain", "poly")}
    assert g_err["poly"] <= 1.5 * g_err["plain"] + 1e-4 * grads["exact"].norm().item(), g_err
