"""Export to TorchScript (trace) and ONNX (checked with onnxruntime) matches eager mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medeff.errors import ConfigError, OutputExistsError
from medeff.layers import FastDepthwiseConv3d
from medeff.models import create_model, export_model, native_layers

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e .[test]")


def _randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _flat(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _flat(o)]


def _check(model, x, path, fmt, **kwargs):
    model.eval()
    with torch.no_grad():
        ref = [t.numpy() for t in _flat(model(x))]
    model.train()  # export must switch to eval itself and restore the mode
    export_model(model, path, format=fmt, example_input=x, **kwargs)
    assert model.training
    assert path.is_file() and not list(path.parent.glob(".tmp-*"))
    if fmt == "onnx":
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {"input": x.numpy()})
    else:
        loaded = torch.jit.load(str(path))
        with torch.no_grad():
            outs = [t.numpy() for t in _flat(loaded(x))]
    assert len(outs) == len(ref)
    for a, b in zip(outs, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def classifier_2d():
    torch.manual_seed(0)
    return _randomize_bn(create_model("efficientnet_b0", num_classes=5, width=0.5, depth=0.5))


@pytest.fixture(scope="module")
def segmenter_3d():
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=3, task="segmentation",
                         width=0.5, depth=0.5, fast_depthwise=True, memory_efficient=True, spacing=(3.0, 1.0, 1.0))
    assert any(isinstance(m, FastDepthwiseConv3d) for m in model.modules())
    return _randomize_bn(model)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_2d_classifier(classifier_2d, tmp_path, fmt):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    _check(classifier_2d, x, tmp_path / f"clf.{fmt}", fmt)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_3d_segmentation_with_fast_depthwise(segmenter_3d, tmp_path, fmt):
    """Grad mode on (as in a training script): export still uses the native depthwise op and SiLU."""
    x = torch.randn(1, 1, 12, 36, 28, generator=torch.Generator().manual_seed(2))  # not multiples of the stride
    assert torch.is_grad_enabled()
    _check(segmenter_3d, x, tmp_path / f"seg.{fmt}", fmt)
    assert any(isinstance(m, FastDepthwiseConv3d) for m in segmenter_3d.modules())  # swap undone


def test_joint_model_has_two_onnx_outputs(tmp_path):
    torch.manual_seed(0)
    model = create_model("efficientnetv2_b0", spatial_dims=2, in_channels=1, num_classes=2, task="joint",
                         aux_classes=3, width=0.5, depth=0.5)
    path = tmp_path / "joint.onnx"
    _check(model, torch.randn(1, 1, 64, 64), path, "onnx")
    names = [o.name for o in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()]
    assert names == ["output_0", "output_1"]


def test_fast_depthwise_path_cannot_be_exported_without_the_swap(segmenter_3d, tmp_path):
    """Why native_layers exists: the custom autograd op breaks ONNX export when grad mode is on."""
    x = torch.randn(1, 1, 8, 32, 32)
    segmenter_3d.eval()
    with pytest.raises(Exception):  # noqa: B017 - torch raises various types here
        torch.onnx.export(segmenter_3d, (x,), str(tmp_path / "raw.onnx"), dynamo=False)
    with native_layers(segmenter_3d):
        assert not any(isinstance(m, FastDepthwiseConv3d) for m in segmenter_3d.modules())
        torch.onnx.export(segmenter_3d, (x,), str(tmp_path / "ok.onnx"), dynamo=False)
    assert any(isinstance(m, FastDepthwiseConv3d) for m in segmenter_3d.modules())


def test_atomic_and_errors(classifier_2d, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_text("old")
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(OutputExistsError):
        export_model(classifier_2d, path, format="onnx", example_input=x, overwrite=False)
    with pytest.raises(RuntimeError):  # wrong channel count: fails inside the model
        export_model(classifier_2d, path, format="onnx", example_input=torch.randn(1, 2, 32, 32))
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    with pytest.raises(ConfigError, match="did you mean"):
        export_model(classifier_2d, path, format="onx", example_input=x)


@pytest.mark.slow
def test_dynamo_onnx_exporter(classifier_2d, tmp_path):
    pytest.importorskip("onnxscript")
    _check(classifier_2d, torch.randn(1, 3, 64, 64), tmp_path / "dyn.onnx", "onnx", dynamo=True)
