"""The U-Net decoder's polyphase path (``decoder_polyphase``): same outputs, gradients and running statistics as
upsample-then-convolve, taken where ``"auto"`` says, never while tracing, and invisible to the FLOP count."""

from __future__ import annotations

import pytest
import torch

import medeff.models.decoder as decoder_module
from medeff.models import create_model
from medeff.models.decoder import POLYPHASE_MIN_VOXELS

SMALL = "efficientnetv2_b0"  # fewest blocks: cheapest to run


def _pair(**kw):
    torch.manual_seed(0)
    plain = create_model(SMALL, decoder_polyphase=False, **kw).double()  # float64: no rounding noise
    poly = create_model(SMALL, decoder_polyphase=True, **kw).double()
    poly.load_state_dict(plain.state_dict())
    return plain, poly


def _count_calls(monkeypatch) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    real = decoder_module.upsample_conv

    def spy(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(decoder_module, "upsample_conv", spy)
    return calls


@pytest.mark.parametrize(("dims", "size", "extra"), [
    (3, (24, 40, 32), dict(deep_supervision=True)),  # padded to multiples of 32 first
    (3, (32, 32, 32), dict(checkpointing=True)),  # recomputed decoder blocks
    (3, (16, 64, 64), dict(spacing=(5.0, 0.8, 0.8))),  # anisotropic: (1, 2, 2) upsampling, (1, 3, 3) kernels
    (2, (64, 96), dict(aux_classes=2, task="joint")),
])
def test_same_outputs_gradients_and_statistics(monkeypatch, dims, size, extra):
    kw = dict(spatial_dims=dims, in_channels=1, num_classes=3, task="segmentation")
    kw.update(extra)
    plain, poly = _pair(**kw)
    calls = _count_calls(monkeypatch)
    x = torch.randn(2, 1, *size, dtype=torch.float64)
    results = []
    for model in (plain, poly):
        torch.manual_seed(1)  # same drop-path draws
        out = model.train()(x)
        seg, cls = out if isinstance(out, tuple) else (out, None)
        seg = seg if isinstance(seg, list) else [seg]
        loss = sum(s.square().mean() for s in seg) + (0 if cls is None else cls.square().mean())
        loss.backward()
        results.append((seg, [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()]))
    # every block took the polyphase path (forced on), twice with checkpointing (forward, then recomputed)
    assert len(calls) == len(poly.decoder.blocks) * (2 if extra.get("checkpointing") else 1)
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b)
    for group in (1, 2):  # gradients, running statistics
        for a, b in zip(results[0][group], results[1][group]):
            torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), poly.eval()(x))


def test_auto_takes_the_path_on_cpu_from_the_voxel_threshold(monkeypatch):
    torch.manual_seed(0)
    model = create_model(SMALL, spatial_dims=3, in_channels=1, num_classes=2, task="segmentation").eval()
    assert all(b.polyphase == "auto" for b in model.decoder.blocks)
    calls = _count_calls(monkeypatch)
    with torch.no_grad():
        model(torch.randn(1, 1, 64, 64, 64))
    # coarse inputs of 32^3 and 16^3 voxels qualify, 8^3 and below do not
    assert calls and all(c[0] * c[2] * c[3] * c[4] >= POLYPHASE_MIN_VOXELS for c in calls)
    assert sorted(c[2] for c in calls) == [16, 32]


def test_off_while_tracing_and_when_disabled(monkeypatch):
    calls = _count_calls(monkeypatch)
    torch.manual_seed(0)
    model = create_model(SMALL, spatial_dims=2, in_channels=1, num_classes=2, task="segmentation",
                         decoder_polyphase=True).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)  # the check would rerun the eager model
        assert calls == []
        traced_out = traced(x)
        assert calls == []
        torch.testing.assert_close(traced_out, model(x))
    assert calls  # the eager model took it
    calls.clear()
    off = create_model(SMALL, spatial_dims=2, in_channels=1, num_classes=2, task="segmentation",
                       decoder_polyphase=False).eval()
    with torch.no_grad():
        off(x)
    assert calls == []


def test_value_checked():
    with pytest.raises(ValueError, match="polyphase must be 'auto', True or False, got 'fast'"):
        create_model(SMALL, spatial_dims=3, in_channels=1, num_classes=2, task="segmentation",
                     decoder_polyphase="fast")


def test_bench_flops_count_the_architecture_not_the_algorithm():
    """medeff bench reports the function's multiply-adds: the polyphase path (fewer) does not change the count."""
    from medeff.benchmarks.flops import forward_flops

    counts = {}
    for mode in ("auto", False, True):
        with torch.device("meta"):
            model = create_model(SMALL, spatial_dims=3, in_channels=1, num_classes=2, task="segmentation",
                                 decoder_polyphase=mode)
        counts[mode] = forward_flops(model, (1, 1, 64, 64, 64))
    assert counts["auto"] == counts[False]  # the count runs on meta, where "auto" keeps the plain path
    assert counts[True] < counts[False]  # forced on, the saving is real (and would be counted)
