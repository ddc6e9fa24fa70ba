"""Published parameter counts and FLOPs, and architecture/numerics parity with timm (2D reference)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from medeff.models import create_model, list_models

from .helpers import meta_model
from .timm_helper import import_timm

# Published parameter counts (2D, 3 input channels, 1000 classes), in millions.
PUBLISHED_PARAMS_M = {
    "efficientnet_b0": 5.29, "efficientnet_b1": 7.79, "efficientnet_b2": 9.11, "efficientnet_b3": 12.23,
    "efficientnet_b4": 19.34, "efficientnet_b5": 30.39, "efficientnet_b6": 43.04, "efficientnet_b7": 66.35,
    "efficientnetv2_s": 21.46, "efficientnetv2_m": 54.14, "efficientnetv2_l": 118.52,
    "efficientnetv2_b0": 7.14, "efficientnetv2_b1": 8.14, "efficientnetv2_b2": 10.10, "efficientnetv2_b3": 14.36,
    "efficientnet_lite0": 4.65, "efficientnet_lite1": 5.42, "efficientnet_lite2": 6.09, "efficientnet_lite3": 8.20,
    "efficientnet_lite4": 13.01,
}
# MONAI's hand-written table of B0-B7 level channels, used here only as an oracle.
LEVEL_CHANNELS = {
    "efficientnet_b0": (16, 24, 40, 112, 320), "efficientnet_b1": (16, 24, 40, 112, 320),
    "efficientnet_b2": (16, 24, 48, 120, 352), "efficientnet_b3": (24, 32, 48, 136, 384),
    "efficientnet_b4": (24, 32, 56, 160, 448), "efficientnet_b5": (24, 40, 64, 176, 512),
    "efficientnet_b6": (32, 40, 72, 200, 576), "efficientnet_b7": (32, 48, 80, 224, 640),
}


def test_every_model_has_a_published_count():
    assert set(list_models()) == set(PUBLISHED_PARAMS_M)


@pytest.mark.parametrize("name", list_models())
def test_param_count_matches_published(name):
    model = meta_model(name)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - PUBLISHED_PARAMS_M[name]) / PUBLISHED_PARAMS_M[name] < 0.005, n


@pytest.mark.parametrize("name", list(LEVEL_CHANNELS))
def test_level_channels_match_oracle(name):
    with torch.device("meta"):
        model = create_model(name, features_only=True)
    assert tuple(model.feature_info.channels()) == LEVEL_CHANNELS[name]


def test_b0_macs_at_224():
    model = create_model("efficientnet_b0").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    gmacs = counter.get_total_flops() / 2 / 1e9
    assert abs(gmacs - 0.39) / 0.39 < 0.03, gmacs


def _randomize_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize(
    ("timm_name", "name", "options"),
    [
        ("efficientnet_b0", "efficientnet_b0", {"norm": ("batch", {"eps": 1e-5})}),
        ("tf_efficientnetv2_b0", "efficientnetv2_b0", {"padding": "same_tf"}),
        ("efficientnet_lite0", "efficientnet_lite0", {"norm": ("batch", {"eps": 1e-5})}),
        ("tf_efficientnet_lite2", "efficientnet_lite2", {"padding": "same_tf"}),
    ],
)
def test_matches_timm_state_dict_and_outputs(timm_name, name, options):
    """Same parameter names and shapes as timm, and the same outputs once timm's weights are copied."""
    timm = import_timm()
    torch.manual_seed(0)
    ref = timm.create_model(timm_name, pretrained=False, num_classes=10).eval()
    _randomize_bn(ref)
    ours = create_model(name, num_classes=10, drop_path_rate=0.0, **options).eval()
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert {k: tuple(v.shape) for k, v in our_sd.items() if k != "_extra_state"} == \
        {k: tuple(v.shape) for k, v in ref_sd.items()}
    ours.load_state_dict(ref_sd)
    x = torch.randn(2, 3, 65, 49)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("timm_name", "name"), [("efficientnet_b0", "efficientnet_b0"),
                                                  ("tf_efficientnetv2_s", "efficientnetv2_s"),
                                                  ("efficientnet_lite3", "efficientnet_lite3")])
def test_features_match_timm(timm_name, name):
    timm = import_timm()
    ref = timm.create_model(timm_name, pretrained=False, features_only=True).eval()
    ours = create_model(name, features_only=True).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert ours.feature_info.channels() == ref.feature_info.channels()
    assert [r[0] for r in ours.feature_info.reduction()] == ref.feature_info.reduction()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert [f.shape for f in ours(x)] == [f.shape for f in ref(x)]


def test_docs_table_generator():
    from medeff.models.table import markdown_table, model_table

    rows = model_table(["efficientnet_b0", "efficientnet_phi1.5"])
    assert rows[0]["params_m"] == pytest.approx(5.2885, abs=1e-3) and rows[0]["gmacs"] == pytest.approx(0.386, abs=0.01)
    assert rows[1]["phi"] == 1.5 and rows[0]["gmacs"] < rows[1]["gmacs"]
    text = markdown_table(rows)
    assert text.count("\n") == 3 and "| efficientnet_b0 | efficientnet | 0 | 1 | 1 | 224 | 0.2 | 5.29 | 0.39 |" in text
