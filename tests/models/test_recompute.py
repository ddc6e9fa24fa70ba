"""MBConv ``recompute`` (expansion recomputed in backward): same outputs, gradients and running stats, less saved."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch

from medeff.benchmarks.worker import saved_bytes
from medeff.models import create_model
from medeff.models.blocks import MBConv, check_recompute, recompute, recompute_active


def _pair(**kwargs):
    torch.manual_seed(0)
    ref = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=3, width=0.5, depth=0.5,
                       dropout=0.0, drop_path_rate=0.0, recompute=False, **kwargs).double().train()
    rec = copy.deepcopy(ref)
    for m in rec.modules():
        if isinstance(m, MBConv):
            m.recompute = True
    return ref, rec


def test_recompute_default_on_in_3d_encoders_only():
    kw = dict(in_channels=1, num_classes=2, width=0.25, depth=0.25)
    unet = create_model("efficientnet_b0", spatial_dims=3, task="segmentation", **kw)
    m3 = create_model("efficientnet_b0", spatial_dims=3, **kw)  # a classifier: its peak is not lowered
    m2 = create_model("efficientnet_b0", spatial_dims=2, task="segmentation", **kw)
    ck = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, width=0.25, depth=0.25,
                      checkpointing=True, task="segmentation")
    assert all(b.recompute == "auto" for b in unet.modules() if isinstance(b, MBConv))
    assert not any(b.recompute for b in m3.modules() if isinstance(b, MBConv))
    assert not any(b.recompute for b in m2.modules() if isinstance(b, MBConv))
    assert not any(b.recompute for b in ck.modules() if isinstance(b, MBConv))  # stages are recomputed instead


def test_recompute_same_outputs_grads_and_running_stats_less_saved():
    ref, rec = _pair()
    x = torch.randn(2, 1, 16, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 2])
    outs = []
    for model in (ref, rec):
        out = model(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    for (name, p), (_, q) in zip(ref.named_parameters(), rec.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    # the recomputation must not update batch-norm running statistics a second time
    for (name, a), (_, b) in zip(ref.named_buffers(), rec.named_buffers()):
        torch.testing.assert_close(a, b, msg=name)
    assert saved_bytes(rec, x) < 0.8 * saved_bytes(ref, x)


def test_recompute_off_in_eval_and_no_grad():
    ref, rec = _pair()
    x = torch.randn(1, 1, 16, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ref.eval()(x), rec.eval()(x))


def test_unet_checkpointing_updates_batchnorm_running_stats_once():
    """Decoder (and encoder stage) checkpointing: the recomputation in backward leaves the running stats alone."""
    torch.manual_seed(0)
    kwargs = dict(spatial_dims=3, in_channels=1, num_classes=2, task="segmentation", width=0.25, depth=0.25,
                  drop_path_rate=0.0, decoder_channels=(16, 8, 8, 4, 4))
    plain = create_model("efficientnet_b0", **kwargs).double().train()
    ckpt = create_model("efficientnet_b0", checkpointing=True, **kwargs).double().train()
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.decoder.checkpointing
    x = torch.randn(2, 1, 32, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 2, (2, 32, 32, 32))
    for model in (plain, ckpt):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for (name, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):
        torch.testing.assert_close(a, b, msg=name)
    tracked = [b for n, b in ckpt.decoder.named_buffers() if n.endswith("num_batches_tracked")]
    assert tracked and all(int(t) == 1 for t in tracked)
    for (name, p), (_, q) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_recompute_auto_is_for_cpu_inputs_only():
    """``"auto"`` recomputes for CPU inputs; on another device (a GPU step is launch-bound) only ``True`` does."""
    cpu, gpu_like = torch.zeros(1), torch.zeros(1, device="meta")
    assert recompute_active("auto", cpu) and not recompute_active("auto", gpu_like)
    assert recompute_active(True, cpu) and recompute_active(True, gpu_like)
    assert not recompute_active(False, cpu)
    m = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, width=0.25, depth=0.25,
                     recompute=True)
    assert all(b.recompute is True for b in m.modules() if isinstance(b, MBConv))
    for given, read in ((None, "auto"), ("auto", "auto"), (True, True), (False, False)):
        assert check_recompute(given) == read
    with pytest.raises(ValueError, match="recompute must be"):
        create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, recompute="yes")


def test_recompute_runs_plainly_while_compiling():
    """Under ``torch.compile`` (which cannot trace the checkpoint's contexts) blocks and ``recompute()`` run their
    function as it is: same outputs and running statistics, nothing recomputed."""
    ref, rec = _pair()
    x = torch.randn(2, 1, 16, 16, 16, dtype=torch.float64)
    calls = []

    def counted(t):
        calls.append(1)
        return t * 2

    with mock.patch("torch.compiler.is_compiling", return_value=True):
        assert not recompute_active(True, x)
        y = recompute(counted, (), x.requires_grad_())
        y.sum().backward()
        assert len(calls) == 1  # not run again in backward
        outs = [model(x).sum() for model in (ref, rec)]
    torch.testing.assert_close(outs[0], outs[1])
    for (name, a), (_, b) in zip(ref.named_buffers(), rec.named_buffers()):
        torch.testing.assert_close(a, b, msg=name)
