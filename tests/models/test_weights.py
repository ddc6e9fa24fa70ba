"""Weight loading: timm, torchvision and medeff-checkpoint sources, the report, stem adaptation, 2D -> 3D inflation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medeff.errors import CheckpointError
from medeff.models import adapt_input_channels, create_model, inflate_weight, list_models, load_weights
from medeff.models.convert import torchvision_to_timm
from medeff.models.blocks import ConvNormAct, DepthwiseSeparable, FusedMBConv, MBConv

from .helpers import meta_model
from .timm_helper import import_timm

#: timm name, medeff name, the options that make a medeff model follow the same convention from the start (the
#: loader sets them anyway; see test_conventions.py)
TIMM_CASES = [
    ("efficientnet_b0", "efficientnet_b0", {"norm": ("batch", {"eps": 1e-5})}),
    ("tf_efficientnetv2_b0", "efficientnetv2_b0", {"padding": "same_tf"}),
]


def _train_bn(model: nn.Module, shape=(4, 3, 64, 64), steps: int = 3) -> nn.Module:
    """A few forward passes in train mode so BatchNorm running statistics are not the defaults."""
    g = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(shape, generator=g) * 2 + 0.5)
    return model.eval()


def _medeff(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(123)  # a different initialisation from the source
    return create_model(name, drop_path_rate=0.0, **kwargs).eval()


@pytest.fixture(scope="module", params=TIMM_CASES, ids=[c[0] for c in TIMM_CASES])
def timm_case(request):
    timm = import_timm()
    timm_name, name, options = request.param
    torch.manual_seed(0)
    ref = _train_bn(timm.create_model(timm_name, pretrained=False, num_classes=10))
    return ref, name, options


def _x(*shape, seed=5):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_file_gives_same_logits(timm_case, tmp_path, suffix):
    ref, name, options = timm_case
    assert ref.bn1.running_var.std() > 0  # statistics moved away from the defaults
    path = tmp_path / f"{ref.pretrained_cfg['architecture']}{suffix}"  # the name tells the convention
    if suffix == ".pth":
        torch.save(ref.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = _medeff(name, num_classes=10, **options)
    x = _x(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() > 1e-2  # not equal before loading
        report = load_weights(ours, path)
        diff = (ours(x) - ref(x)).abs().max().item()
    assert diff < 1e-4, diff
    assert report.format == "timm" and not report.adapted and not report.skipped and not report.missing
    assert len(report.loaded) == len(ref.state_dict())
    assert not report.changes  # the options already matched the weights' convention


# --- torchvision naming, written independently from medeff.models.convert: from the module types -------------

def _tv_layer(block: nn.Module) -> dict[str, str]:
    """medeff attribute prefix -> torchvision ``block.{i}`` prefix for one block (from torchvision's layer order)."""
    if isinstance(block, ConvNormAct):
        order = [("conv", "bn1")]
    elif isinstance(block, DepthwiseSeparable):
        order = [("conv_dw", "bn1"), "se", ("conv_pw", "bn2")]
    elif isinstance(block, MBConv):
        order = [("conv_pw", "bn1"), ("conv_dw", "bn2"), "se", ("conv_pwl", "bn3")]
    elif isinstance(block, FusedMBConv):
        order = [("conv_exp", "bn1"), "se", ("conv_pwl", "bn2")]
    else:
        raise AssertionError(type(block))
    if isinstance(getattr(block, "se", None), nn.Identity) or not hasattr(block, "se"):
        order = [o for o in order if o != "se"]
    out = {}
    for i, item in enumerate(order):
        if item == "se":
            out["se.conv_reduce."] = f"block.{i}.fc1."
            out["se.conv_expand."] = f"block.{i}.fc2."
        else:
            out[item[0] + "."] = f"block.{i}.0."
            out[item[1] + "."] = f"block.{i}.1."
    return out


def to_torchvision(model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a medeff classifier's state dict to torchvision's EfficientNet names."""
    n_stages = len(model.blocks)
    out = {}
    for key, value in model.state_dict().items():
        if key == "_extra_state":  # the convention record (torchvision has none)
            continue
        if key.startswith("conv_stem."):
            new = "features.0.0." + key.split(".", 1)[1]
        elif key.startswith("bn1."):
            new = "features.0.1." + key.split(".", 1)[1]
        elif key.startswith("conv_head."):
            new = f"features.{n_stages + 1}.0." + key.split(".", 1)[1]
        elif key.startswith("bn2."):
            new = f"features.{n_stages + 1}.1." + key.split(".", 1)[1]
        elif key.startswith("classifier."):
            new = "classifier.1." + key.split(".", 1)[1]
        else:
            _, s, b, rest = key.split(".", 3)
            table = _tv_layer(model.blocks[int(s)][int(b)])
            attr = next(a for a in table if rest.startswith(a))
            new = f"features.{int(s) + 1}.{b}.{table[attr]}{rest[len(attr):]}"
        out[new] = value
    return out


def test_torchvision_names_look_like_torchvision():
    ref = _medeff("efficientnet_b0", num_classes=10)
    tv = to_torchvision(ref)
    for key in ("features.0.0.weight", "features.1.0.block.0.0.weight", "features.1.0.block.1.fc1.weight",
                "features.2.0.block.3.1.running_var", "features.8.0.weight", "classifier.1.bias"):
        assert key in tv, key


@pytest.mark.parametrize("name", list_models())
def test_torchvision_renaming_roundtrips_every_variant(name):
    """Names and shapes only (meta device): every block kind and depth of the family maps back exactly."""
    model = meta_model(name)
    renamed, unknown = torchvision_to_timm(to_torchvision(model))
    assert not unknown
    assert {k: tuple(v.shape) for k, v in renamed.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()
                                                               if k != "_extra_state"}


#: torchvision's conventions: V1 BatchNorm eps 1e-5, V2 eps 1e-3, symmetric padding (medeff's default)
TORCHVISION_CASES = [("efficientnet_b0", {"norm": ("batch", {"eps": 1e-5})}), ("efficientnetv2_b0", {})]


@pytest.mark.parametrize("name, options", TORCHVISION_CASES, ids=[c[0] for c in TORCHVISION_CASES])
def test_torchvision_file_gives_same_logits(name, options, tmp_path):
    torch.manual_seed(0)
    ref = _train_bn(create_model(name, num_classes=10, drop_path_rate=0.0, **options))
    path = tmp_path / "tv.pth"
    torch.save(to_torchvision(ref), path)
    ours = _medeff(name, num_classes=10)  # medeff defaults: the loader sets torchvision's eps
    report = load_weights(ours, path)
    x = _x(2, 3, 64, 64)
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
    assert diff < 1e-4, diff
    assert report.format == "torchvision" and not report.skipped and not report.missing


# --- medeff checkpoints ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["net.", "model.", "model.module."])
def test_lightning_checkpoint_prefix_is_stripped(prefix, tmp_path):
    src = _train_bn(create_model("efficientnet_b0", num_classes=3, width=0.5, depth=0.5), (2, 3, 32, 32))
    state = {prefix + k: v for k, v in src.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 4, "medeff": {"format": "medeff-checkpoint"}}, path)
    ours = _medeff("efficientnet_b0", num_classes=3, width=0.5, depth=0.5)
    report = load_weights(ours, path, strict=True)
    assert report.format == "lightning"
    assert "".join(report.prefixes) == prefix
    assert list(report.skipped) == ["criterion.weight"]
    x = _x(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), src(x), atol=1e-5)


def test_segmentation_checkpoint_roundtrip(tmp_path):
    kw = dict(spatial_dims=2, in_channels=1, num_classes=3, task="joint", width=0.5, depth=0.5)
    src = create_model("efficientnet_b0", **kw).eval()
    path = tmp_path / "seg.pt"
    torch.save({"net." + k: v for k, v in src.state_dict().items()}, path)
    ours = _medeff("efficientnet_b0", **kw)
    report = load_weights(ours, path, strict=True)
    assert not report.missing and not report.skipped
    x = _x(1, 1, 32, 32)
    with torch.no_grad():
        for a, b in zip(ours(x), src(x)):
            assert torch.allclose(a, b, atol=1e-5)


# --- report, heads, errors --------------------------------------------------------------------------------------

def test_other_class_count_skips_head_only(timm_case):
    ref, name, options = timm_case
    ours = _medeff(name, num_classes=3, **options)
    before = ours.classifier.weight.clone()
    report = load_weights(ours, ref.state_dict(), convention=ref.pretrained_cfg["architecture"])
    assert set(report.skipped) == {"classifier.weight", "classifier.bias"}
    assert "class count" in report.skipped["classifier.weight"]
    assert set(report.missing) == {"classifier.weight", "classifier.bias"}
    assert torch.equal(ours.classifier.weight, before)
    x = _x(1, 3, 64, 64)
    with torch.no_grad():
        a = ours.forward_head(ours.forward_features(x)[-1], pre_logits=True)
        b = ref.forward_head(ref.forward_features(x), pre_logits=True)
    assert (a - b).abs().max() < 1e-4


def test_missing_encoder_weights_raise_and_leave_model_unchanged():
    src = create_model("efficientnet_b0", num_classes=10)
    ours = create_model("efficientnet_b1", num_classes=10)  # one more block in several stages
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(ours, src.state_dict())
    msg = str(err.value)
    assert "required model tensors unset" in msg and "blocks.1.2.conv_pw.weight" in msg and "Fix:" in msg
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())
    report = load_weights(ours, src.state_dict(), strict_encoder=False)
    assert "blocks.1.2.conv_pw.weight" in report.missing and len(report.loaded) > 100


def test_wrong_variant_shape_mismatch_is_named():
    src = create_model("efficientnet_b0", num_classes=10)
    ours = create_model("efficientnet_b0", num_classes=10, width=1.25)
    with pytest.raises(CheckpointError, match=r"conv_stem.weight \(shape"):
        load_weights(ours, src.state_dict())


def test_bad_files(tmp_path):
    model = create_model("efficientnet_b0", num_classes=2, width=0.5, depth=0.5)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(model, tmp_path / "nope.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="suffix"):
        load_weights(model, tmp_path / "w.npz")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="Cannot read"):
        load_weights(model, tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_weights(model, tmp_path / "list.pth")


# --- stem adaptation -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rgb_model():
    torch.manual_seed(0)
    return _train_bn(create_model("efficientnet_b0", num_classes=4, width=0.5, depth=0.5), (2, 3, 32, 32))


@pytest.mark.parametrize("k", [1, 6])
def test_stem_adaptation_is_exact_for_identical_channels(rgb_model, k):
    ours = _medeff("efficientnet_b0", in_channels=k, num_classes=4, width=0.5, depth=0.5)
    report = load_weights(ours, rgb_model)
    assert list(report.adapted) == ["conv_stem.weight"]
    assert ("sum over channels" if k == 1 else "scaled by 3/6") in report.adapted["conv_stem.weight"]
    gray = _x(2, 1, 32, 32)
    with torch.no_grad():
        diff = (ours(gray.repeat(1, k, 1, 1)) - rgb_model(gray.repeat(1, 3, 1, 1))).abs().max().item()
    assert diff < 1e-4, diff


def test_adapt_input_channels_rule():
    w = torch.randn(8, 3, 3, 3)
    assert torch.allclose(adapt_input_channels(w, 1), w.sum(1, keepdim=True))
    w5 = adapt_input_channels(w, 5)
    assert w5.shape == (8, 5, 3, 3)
    for i in range(5):
        assert torch.allclose(w5[:, i], w[:, i % 3] * 3 / 5)
    with pytest.raises(ValueError):
        adapt_input_channels(w, 0)


# --- 2D -> 3D inflation ----------------------------------------------------------------------------------------

def test_inflate_weight_rule():
    w = torch.randn(4, 2, 3, 3)
    w3 = inflate_weight(w, (5, 3, 3))
    assert w3.shape == (4, 2, 5, 3, 3)
    assert torch.allclose(w3.sum(2), w) and torch.allclose(w3[:, :, 2], w / 5)
    assert torch.equal(inflate_weight(w, (1, 3, 3))[:, :, 0], w)
    with pytest.raises(ValueError, match="trailing"):
        inflate_weight(w, (3, 5, 5))


def _periodic_depth_padding(model: nn.Module) -> None:
    """Make every 3D conv pad depth periodically (in-plane padding unchanged): depth-constant stays constant."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d) and m.padding[0] > 0:
            pd = m.padding[0]
            m.padding = (0, *m.padding[1:])
            m.register_forward_pre_hook(lambda mod, args, pd=pd: (F.pad(args[0], (0, 0, 0, 0, pd, pd),
                                                                        mode="circular"),))


def _stage_models(kernels=None, in_channels=3):
    opts = dict(width=0.5, depth=0.5, features_only=True, out_indices=list(range(8)))
    torch.manual_seed(0)
    m2 = _train_bn(create_model("efficientnet_b0", spatial_dims=2, **opts), (2, 3, 32, 32))
    torch.manual_seed(1)
    m3 = create_model("efficientnet_b0", spatial_dims=3, in_channels=in_channels, strides=[(1, 2, 2)] * 5,
                      kernels=kernels, **opts).eval()
    return m2, m3


def _assert_depth_constant_match(m2, m3, in_channels=3, depth=4):
    image = _x(1, 3, 32, 32)
    volume = image.mean(1, keepdim=True) if in_channels == 1 else image
    with torch.no_grad():
        f2 = m2(image.mean(1, keepdim=True).repeat(1, 3, 1, 1) if in_channels == 1 else image)
        f3 = m3(volume.unsqueeze(2).repeat(1, 1, depth, 1, 1))
    assert len(f2) == len(f3) == 8
    for level, (a, b) in enumerate(zip(f2, f3)):
        assert b.shape[2] == depth
        for d in range(depth):
            diff = (b[:, :, d] - a).abs().max().item()
            assert diff < 1e-4, (level, d, diff)


def test_inflated_model_reproduces_every_stage_on_depth_constant_input():
    m2, m3 = _stage_models()
    report = load_weights(m3, m2)
    assert not report.skipped and not report.missing
    assert "divided by 3" in report.adapted["conv_stem.weight"]
    assert "divided by 3" in report.adapted["blocks.1.0.conv_dw.weight"]
    assert "depth 1: copied" in report.adapted["blocks.1.0.conv_pw.weight"]  # 1x1 -> 1x1x1
    assert all(k.endswith(".weight") and "bn" not in k for k in report.adapted)  # norms and biases load as is
    _periodic_depth_padding(m3)
    _assert_depth_constant_match(m2, m3)


def test_inflation_with_depth_kernel_one_is_a_copy_and_exact_with_zero_padding():
    """Anisotropic 3D (kernel depth 1 at every level): no rescale, and the model's own padding keeps the match."""
    m2, m3 = _stage_models(kernels=[(1, None, None)] * 5, in_channels=1)
    report = load_weights(m3, m2)
    assert "depth 1: copied" in report.adapted["blocks.1.0.conv_dw.weight"]
    assert "sum over channels" in report.adapted["conv_stem.weight"]
    _assert_depth_constant_match(m2, m3, in_channels=1)


def test_2d_classifier_into_3d_segmentation_encoder():
    torch.manual_seed(0)
    src = create_model("efficientnet_b0", num_classes=1000, width=0.5, depth=0.5)
    seg = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, task="segmentation",
                       width=0.5, depth=0.5)
    report = load_weights(seg, src)
    assert all(k.startswith("encoder.") for k in report.loaded + list(report.adapted))
    assert {"conv_head.weight", "classifier.weight"} <= set(report.skipped)
    assert report.missing and all(k.startswith(("decoder.", "seg_head.")) for k in report.missing)
    assert torch.allclose(seg.encoder.conv_stem.weight.sum(2), src.conv_stem.weight.sum(1, keepdim=True), atol=1e-6)
