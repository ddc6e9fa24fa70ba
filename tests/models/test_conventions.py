"""Pretrained weights give their source framework's outputs: the weights' convention (BatchNorm eps, padding,
activation) is found, applied, recorded, saved with checkpoints and restored, or the load fails loudly.

Sources are randomly initialised (nothing is downloaded) with non-trivial BatchNorm statistics (running variance
uniform in [0.01, 2], see :func:`torchvision_ref.realistic_state`), so a wrong eps shows; every comparison runs in
float64, so the 1e-5 bound measures conventions, not float32 rounding.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from medeff.errors import CheckpointError, MedeffError
from medeff.models import create_model, load_weights
from medeff.layers import padding_mode
from medeff.models.conventions import CONVENTIONS, WeightsConvention, decode_record

from .timm_helper import import_timm
from .torchvision_ref import layout_digest, realistic_state, reference_input, torchvision_reference

TOL = 1e-5


def _x(size: int = 64, seed: int = 5) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.double().eval()(x)


def _medeff(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(123)
    return create_model(name, num_classes=10, drop_path_rate=0.0, **kwargs).eval()


def _bn_eps(model: nn.Module) -> set[float]:
    return {m.eps for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _wrong(conv: dict) -> WeightsConvention:
    """The same convention with the other common BatchNorm eps."""
    return dataclasses.replace(WeightsConvention.from_dict(conv), bn_eps=1e-3 if conv["bn_eps"] == 1e-5 else 1e-5)


def _assert_matches(name: str, source, ref: nn.Module, expect: dict, x: torch.Tensor | None = None, **kw):
    """medeff ``name`` loaded from ``source`` reproduces ``ref``; with the other eps it does not."""
    x = _x() if x is None else x
    want = _logits(ref, x)
    ours = _medeff(name)
    report = load_weights(ours, source, **kw)
    for key, value in expect.items():
        assert report.convention[key] == value, (key, report.convention)
    assert _bn_eps(ours) == {expect["bn_eps"]}
    err = _rel(_logits(ours, x), want)
    assert err < TOL, err
    control = _medeff(name)
    load_weights(control, source, convention=_wrong(report.convention))
    assert _rel(_logits(control, x), want) > 1e-3  # the statistics make eps matter
    return ours, report


# --- timm ----------------------------------------------------------------------------------------------------

TIMM = [
    ("efficientnet_b0", "efficientnet_b0", {"source": "timm", "bn_eps": 1e-5, "padding": "same"}),
    ("efficientnet_b3", "efficientnet_b3", {"source": "timm", "bn_eps": 1e-5, "padding": "same"}),
    ("tf_efficientnet_b0", "efficientnet_b0", {"source": "timm-tf", "bn_eps": 1e-3, "padding": "same_tf"}),
    ("efficientnetv2_s", "efficientnetv2_s", {"source": "timm", "bn_eps": 1e-5, "padding": "same"}),
    ("tf_efficientnetv2_s", "efficientnetv2_s", {"source": "timm-tf", "bn_eps": 1e-3, "padding": "same_tf"}),
    ("efficientnet_lite0", "efficientnet_lite0", {"source": "timm", "bn_eps": 1e-5, "padding": "same", "act": "relu6"}),
    ("tf_efficientnet_lite1", "efficientnet_lite1",
     {"source": "timm-tf", "bn_eps": 1e-3, "padding": "same_tf", "act": "relu6"}),
]


@pytest.fixture(scope="module", params=TIMM, ids=[c[0] for c in TIMM])
def timm_case(request):
    timm = import_timm()
    timm_name, name, expect = request.param
    torch.manual_seed(0)
    ref = realistic_state(timm.create_model(timm_name, pretrained=False, num_classes=10), seed=1)
    return timm_name, name, expect, ref


def test_timm_file_named_after_the_model(timm_case, tmp_path):
    timm_name, name, expect, ref = timm_case
    path = tmp_path / f"{timm_name}.ra_in1k.pth"
    torch.save(ref.state_dict(), path)
    ours, report = _assert_matches(name, path, ref, expect)
    assert "path" in report.convention_from
    assert report.changes  # medeff's defaults (eps 1e-3, symmetric padding) fit none of these sources


def test_timm_module_is_inspected(timm_case):
    timm_name, name, expect, ref = timm_case
    ours, report = _assert_matches(name, ref, ref, expect)
    assert report.convention["mean"] == list(ref.pretrained_cfg["mean"])
    assert "source module" in report.convention_from


def test_timm_state_dict_needs_a_convention(timm_case):
    timm_name, name, expect, ref = timm_case
    ours = _medeff(name)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(CheckpointError, match="convention='tf'") as err:
        load_weights(ours, ref.state_dict())
    assert isinstance(err.value, MedeffError) and "Fix:" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())
    _assert_matches(name, ref.state_dict(), ref, expect, convention=timm_name)


def test_hugging_face_config_names_the_model(tmp_path):
    timm = import_timm()
    torch.manual_seed(0)
    ref = realistic_state(timm.create_model("tf_efficientnet_b0", num_classes=10), seed=2)
    folder = tmp_path / "snapshot"
    folder.mkdir()
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "tf_efficientnet_b0",
                                                    "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    ours, report = _assert_matches("efficientnet_b0", folder / "model.safetensors", ref,
                                   {"source": "timm-tf", "padding": "same_tf", "bn_eps": 1e-3, "mean": [0.5] * 3})
    assert "config.json" in report.convention_from


# --- torchvision ---------------------------------------------------------------------------------------------

def test_reference_matches_torchvision():
    """The torchvision reference of these tests has torchvision's layout and outputs (recorded from torchvision
    0.28.0's own classes by make_torchvision_reference.py)."""
    recorded = json.loads((Path(__file__).parent / "data" / "torchvision_reference.json").read_text())
    assert set(recorded["models"]) == {"efficientnet_b0", "efficientnet_b3", "efficientnet_v2_s"}
    for name, entry in recorded["models"].items():
        ref = torchvision_reference(name)
        assert layout_digest(ref) == entry["layout_sha256"], name
        want = torch.tensor(entry["logits"], dtype=torch.float64)
        assert _rel(_logits(ref, reference_input()), want) < 1e-9, name


TORCHVISION = [
    ("efficientnet_b0", "efficientnet_b0", {"source": "torchvision", "bn_eps": 1e-5, "padding": "same"}),
    ("efficientnet_b3", "efficientnet_b3", {"source": "torchvision", "bn_eps": 1e-5, "padding": "same"}),
    ("efficientnet_v2_s", "efficientnetv2_s", {"source": "torchvision", "bn_eps": 1e-3, "padding": "same"}),
]


@pytest.mark.parametrize("tv_name, name, expect", TORCHVISION, ids=[c[0] for c in TORCHVISION])
def test_torchvision_weights(tv_name, name, expect, tmp_path):
    ref = torchvision_reference(tv_name, seed=3)
    path = tmp_path / "weights.pth"  # nothing in the name: the layout says it all
    torch.save(ref.state_dict(), path)
    ours, report = _assert_matches(name, path, ref, {**expect, "mean": [0.485, 0.456, 0.406]})
    assert report.format == "torchvision" and not report.skipped and not report.missing
    assert ("EfficientNetV2" in report.convention_from) == ("v2" in tv_name)


# --- MONAI / efficientnet_pytorch ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def monai_b0():
    from monai.networks.nets import EfficientNetBN

    torch.manual_seed(0)
    return realistic_state(EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3,
                                          num_classes=10), seed=4)


def test_monai_state_dict(monai_b0):
    # MONAI pads statically for its nominal 224 input (TensorFlow "SAME" there); sizes that are multiples of 32
    # meet the same even sizes at every stride-2 layer, where medeff's dynamic "same_tf" pads identically
    expect = {"source": "monai", "bn_eps": 1e-3, "padding": "same_tf"}
    ours, report = _assert_matches("efficientnet_b0", monai_b0.state_dict(), monai_b0, expect)
    assert report.format == "monai" and not report.skipped and not report.missing
    assert report.convention_from == "monai layout"
    assert all(padding_mode(m) == "same_tf" for m in ours.modules() if isinstance(m, nn.Conv2d))


def test_efficientnet_pytorch_flat_numbering(monai_b0):
    flat = {re.sub(r"^_blocks\.\d+\.(\d+)\.", r"_blocks.\1.", k): v for k, v in monai_b0.state_dict().items()}
    assert "_blocks.15._project_conv.weight" in flat
    ours, report = _assert_matches("efficientnet_b0", flat, monai_b0,
                                   {"source": "efficientnet_pytorch", "bn_eps": 1e-3, "padding": "same_tf"})
    assert report.format == "efficientnet_pytorch" and not report.skipped


# --- the record: saved with the weights, restored on load ------------------------------------------------------

@pytest.fixture(scope="module")
def loaded_b0():
    ref = torchvision_reference("efficientnet_b0", seed=5)
    ours = _medeff("efficientnet_b0")
    load_weights(ours, ref.state_dict())
    return ref, ours


def test_record_is_in_the_state_dict(loaded_b0):
    _, ours = loaded_b0
    state = ours.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # safetensors / .detach() friendly
    assert decode_record(state["_extra_state"]) == ours.weights_convention
    assert ours.weights_convention.source == "torchvision" and ours.weights_convention.bn_eps == 1e-5


def test_fresh_model_records_its_own_settings():
    model = create_model("efficientnetv2_b0", num_classes=2, padding="same_tf")
    assert model.weights_convention == WeightsConvention("medeff", 1e-3, "same_tf", "silu")
    gn = create_model("efficientnet_b0", num_classes=2, norm="group", width=0.5, depth=0.5)
    assert gn.weights_convention.bn_eps is None


def test_load_state_dict_restores_the_convention(loaded_b0, tmp_path):
    ref, ours = loaded_b0
    fresh = _medeff("efficientnet_b0")
    assert _bn_eps(fresh) == {1e-3}
    fresh.load_state_dict(ours.state_dict())  # what `medeff predict` and Lightning's resume do
    assert _bn_eps(fresh) == {1e-5} and fresh.weights_convention == ours.weights_convention
    assert _rel(_logits(fresh, _x()), _logits(ref, _x())) < TOL
    from safetensors.torch import load_file, save_file
    save_file(ours.state_dict(), str(tmp_path / "w.safetensors"))
    again = _medeff("efficientnet_b0")
    again.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    assert _bn_eps(again) == {1e-5}


def test_padding_is_restored_and_parameters_are_shared():
    timm = import_timm()
    torch.manual_seed(0)
    ref = realistic_state(timm.create_model("tf_efficientnet_b0", num_classes=10), seed=6)
    ours = _medeff("efficientnet_b0")
    load_weights(ours, ref, convention="tf_efficientnet_b0")
    fresh = _medeff("efficientnet_b0")
    params = list(fresh.parameters())
    fresh.load_state_dict(ours.state_dict())
    assert padding_mode(fresh.conv_stem) == "same_tf" and fresh.layer_config.padding == "same_tf"
    assert all(a is b for a, b in zip(params, fresh.parameters()))  # an optimizer built before still holds them
    assert _rel(_logits(fresh, _x()), _logits(ref, _x())) < TOL


def test_medeff_checkpoint_restores_convention_in_predict(loaded_b0, tmp_path):
    """A training checkpoint of a model started from torchvision weights predicts with eps 1e-5 again."""
    from medeff.engine.checkpoint import build_metadata
    from medeff.engine.predict import load_model

    ref, ours = loaded_b0
    model_cfg = {"_target_": "medeff.models.create_model", "name": "efficientnet_b0", "num_classes": 10,
                 "drop_path_rate": 0.0}
    meta = build_metadata(task="classification", config={"model": model_cfg}, data={})
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"net." + k: v for k, v in ours.state_dict().items()}, "medeff": meta}, path)
    net, _ = load_model(path)
    assert _bn_eps(net) == {1e-5}
    assert _rel(_logits(net, _x()), _logits(ref, _x())) < TOL
    again = _medeff("efficientnet_b0")
    report = load_weights(again, path)
    assert report.convention_from == "recorded in the weights" and _bn_eps(again) == {1e-5}


def test_state_dict_without_record_keeps_settings(loaded_b0, tmp_path):
    """Checkpoints written before the record existed still load (strictly) and keep the model's settings."""
    _, ours = loaded_b0
    old = {k: v for k, v in ours.state_dict().items() if k != "_extra_state"}
    fresh = _medeff("efficientnet_b0")
    fresh.load_state_dict(old)
    assert _bn_eps(fresh) == {1e-3} and fresh.weights_convention.source == "medeff"
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"net." + k: v for k, v in old.items()}, "medeff": {"format": "medeff-checkpoint"}},
               path)
    report = load_weights(_medeff("efficientnet_b0"), path)
    assert "without a convention record" in report.convention_from


def test_segmentation_encoder_gets_the_convention(tmp_path):
    ref = torchvision_reference("efficientnet_b0", seed=7)
    seg = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, task="segmentation")
    report = load_weights(seg, ref.state_dict())
    assert _bn_eps(seg.encoder) == {1e-5}
    assert _bn_eps(seg.decoder) == {1e-3}  # the decoder is not pretrained: it keeps its own settings
    assert seg.weights_convention.source == "torchvision" and report.convention["bn_eps"] == 1e-5
    assert "encoder._extra_state" in seg.state_dict()
    fresh = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, task="segmentation")
    fresh.load_state_dict(seg.state_dict())
    assert _bn_eps(fresh.encoder) == {1e-5}


def test_tf_padding_in_3d_after_inflation():
    timm = import_timm()
    torch.manual_seed(0)
    ref = timm.create_model("tf_efficientnet_b0", num_classes=10)
    vol = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, width=1.0)
    report = load_weights(vol, ref)
    assert report.changes and padding_mode(vol.conv_stem) == "same_tf"
    with torch.no_grad():
        assert vol.eval()(torch.zeros(1, 1, 16, 32, 32)).shape == (1, 2)


# --- conventions that cannot be followed ------------------------------------------------------------------------

def test_other_activation_is_refused():
    ref = torchvision_reference("efficientnet_b0", seed=8)
    ours = _medeff("efficientnet_b0", act="relu")
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(CheckpointError, match="act='silu'"):
        load_weights(ours, ref.state_dict())
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())
    report = load_weights(ours, ref.state_dict(), convention="model")  # the documented escape hatch
    assert report.convention["act"] == "relu" and not report.changes


def test_batch_norm_weights_into_group_norm_model_are_refused():
    ref = torchvision_reference("efficientnet_b0", seed=9)
    ours = _medeff("efficientnet_b0", norm="group")
    with pytest.raises(CheckpointError, match="norm='batch'"):
        load_weights(ours, ref.state_dict())


def test_restoring_a_record_the_model_cannot_follow_fails(loaded_b0):
    _, ours = loaded_b0
    relu = _medeff("efficientnet_b0", act="relu")
    with pytest.raises(CheckpointError, match="activation"):
        relu.load_state_dict(ours.state_dict())


def test_bad_convention_argument_and_bad_record():
    ref = torchvision_reference("efficientnet_b0", seed=10)
    ours = _medeff("efficientnet_b0")
    with pytest.raises(CheckpointError, match="not a known weights convention"):
        load_weights(ours, ref.state_dict(), convention="keras")
    state = dict(ours.state_dict())
    state["_extra_state"] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    with pytest.raises(CheckpointError, match="_extra_state"):
        load_weights(_medeff("efficientnet_b0"), state)


def test_explicit_convention_overrides_detection():
    ref = torchvision_reference("efficientnet_v2_s", seed=11)
    ours = _medeff("efficientnetv2_s")
    report = load_weights(ours, ref.state_dict(), convention={"source": "user", "bn_eps": 1e-4})
    assert report.convention_from == "given" and _bn_eps(ours) == {1e-4}
    assert json.loads(json.dumps(report.to_dict()))["convention"]["bn_eps"] == 1e-4
    assert CONVENTIONS["torchvision_v2"].bn_eps == 1e-3

