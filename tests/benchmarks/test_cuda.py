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
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, task=task).cuda()
    x = torch.randn(2, 1, 32, 32, 32, device="cuda")
    y = torch.randint(0, 2, (2, 32, 32, 32) if task == "segmentation" else (2,), device="cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    with torch.autocast("cuda", dtype=dtype):
        out = model(x)
    scaler.scale(F.cross_entropy(out.float(), y)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_compile_fullgraph_on_cuda_matches_eager(task):
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, task=task).cuda().eval()
    x = torch.randn(1, 1, 32, 32, 32, device="cuda")
    compiled = torch.compile(model, fullgraph=True)  # fails on any graph break (e.g. a custom CPU op)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-3, atol=1e-3)
    model.train()
    out = torch.compile(model, fullgraph=True)(x)
    out.float().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_polyphase_decoder_on_cuda_matches_the_plain_path(dtype):
    """``decoder_polyphase=True`` on CUDA (``"auto"`` keeps GPUs plain): same logits and gradients, also under AMP."""
    torch.manual_seed(0)
    kw = dict(spatial_dims=3, in_channels=1, num_classes=2, task="segmentation")
    plain = create_model("efficientnet_b0", decoder_polyphase=False, **kw).cuda()
    poly = create_model("efficientnet_b0", decoder_polyphase=True, **kw).cuda()
    poly.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 64, 64, 64, device="cuda")
    outs = []
    for model in (plain, poly):
        torch.manual_seed(1)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model.train()(x).float()
        out.square().mean().backward()
        outs.append((out, model.seg_head.conv.weight.grad))
    tol = dict(rtol=5e-2, atol=5e-2) if dtype else dict(rtol=1e-2, atol=1e-2)  # cuDNN may use TF32
    torch.testing.assert_close(outs[0][0], outs[1][0], **tol)
    torch.testing.assert_close(outs[0][1], outs[1][1], **tol)
