"""Three CT windows as three channels (HUWindowsd), per-channel normalisation (ChannelNormalized) and the data
module's use of a pretrained model's mean/std."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medeff.data.transforms import (DEFAULT_HU_WINDOWS, ChannelNormalized, HUWindowsd, eval_transforms,
                                    preprocessing_transforms, train_transforms)
from medeff.errors import ConfigError

# HU value -> expected (lung W1500/L-600: [-1350, 150], mediastinum W350/L50: [-125, 225], bone W2000/L300:
# [-700, 1300]), each window scaled to [0, 1] and clipped, worked out by hand
KNOWN = {
    -2000.0: (0.0, 0.0, 0.0),
    -1350.0: (0.0, 0.0, 0.0),
    -600.0: (0.5, 0.0, 0.05),
    -125.0: (1225 / 1500, 0.0, 0.2875),
    50.0: (1400 / 1500, 0.5, 0.375),
    225.0: (1.0, 1.0, 0.4625),
    300.0: (1.0, 1.0, 0.5),
    1300.0: (1.0, 1.0, 1.0),
    3000.0: (1.0, 1.0, 1.0),
}


def _image(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(1, 1, -1)  # (C=1, H=1, W=n)


def test_default_windows_on_known_hu_values():
    hu = list(KNOWN)
    out = HUWindowsd(["image"])({"image": _image(hu)})["image"]
    assert out.shape == (3, 1, len(hu)) and out.dtype == torch.float32
    expected = np.asarray([KNOWN[v] for v in hu], dtype=np.float32).T.reshape(3, 1, -1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    assert [tuple(w) for w in DEFAULT_HU_WINDOWS] == [(1500, -600), (350, 50), (2000, 300)]


def test_configured_windows_and_channel_order():
    out = HUWindowsd(["image"], windows=[[100, 0], [400, 40]])({"image": _image([-50, 0, 50, 240])})["image"]
    np.testing.assert_allclose(out[0, 0].numpy(), [0.0, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[1, 0].numpy(), [0.275, 0.4, 0.525, 1.0], atol=1e-6)


def test_windows_keep_the_image_geometry():
    affine = torch.diag(torch.tensor([0.7, 0.7, 2.5, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.full((1, 4, 4, 2), -600.0), affine=affine)
    out = HUWindowsd(["image"])({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.shape == (3, 4, 4, 2)
    assert torch.equal(out.affine, affine)


@pytest.mark.parametrize("windows", [[], [[0, 40]], [[400]], [[400, "x"]], "lung", [[-10, 0]]])
def test_bad_windows_are_config_errors(windows):
    with pytest.raises(ConfigError, match="hu_windows"):
        HUWindowsd(["image"], windows=windows)


def test_multichannel_image_is_refused():
    with pytest.raises(ConfigError, match="2 channels.*hu_windows"):
        HUWindowsd(["image"])({"image": np.zeros((2, 3, 3), np.float32), "case_id": "c1"})


def test_preprocessing_channels_hu_windows_replaces_the_intensity_window():
    spec = {"orientation": None, "channels": "hu_windows", "intensity": {"mode": "window", "window": [0, 1]}}
    tf = eval_transforms(spec, spatial_dims=2, has_label=False, load=False)
    out = tf({"image": _image([-600.0, 50.0, 300.0])})["image"]
    assert out.shape == (3, 1, 3)
    np.testing.assert_allclose(out[:, 0].numpy(), [[0.5, 1400 / 1500, 1.0], [0.0, 0.5, 1.0], [0.05, 0.375, 0.5]],
                               atol=1e-6)
    single = eval_transforms({"orientation": None}, spatial_dims=2, has_label=False, load=False)
    assert single({"image": _image([-600.0])})["image"].shape[0] == 1
    with pytest.raises(ConfigError, match="channels"):
        preprocessing_transforms({"channels": "rgb"}, spatial_dims=2, has_label=False, load=False)


def test_normalisation_per_channel_and_last_in_both_pipelines():
    norm = ChannelNormalized(["image"], mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 2.0])
    out = norm({"image": torch.ones(3, 2, 2)})["image"]
    np.testing.assert_allclose(out[:, 0, 0].numpy(), [1.0, 3.0, 0.5])
    one = ChannelNormalized(["image"], mean=[0.5], std=[0.25])({"image": torch.ones(2, 1, 1)})["image"]
    np.testing.assert_allclose(one.flatten().numpy(), [2.0, 2.0])
    with pytest.raises(ConfigError, match="3 channels"):
        ChannelNormalized(["image"], mean=[0.5, 0.5], std=[1.0, 1.0])({"image": torch.ones(3, 1, 1)})

    spec = {"orientation": None, "intensity": {"mode": "window", "window": [0, 255]},
            "normalize": {"mean": [0.5], "std": [0.25]}}
    img = np.full((1, 4, 4), 255, np.uint8)
    for tf in (eval_transforms(spec, spatial_dims=2, has_label=False, load=False),
               train_transforms(spec, {}, spatial_dims=2, has_label=False, load=False)):
        np.testing.assert_allclose(tf({"image": img})["image"].numpy(), 2.0)  # (1 - 0.5) / 0.25
    for value in ("auto", None):  # auto without a pretrained model, or null: nothing
        plain = eval_transforms({**spec, "normalize": value}, spatial_dims=2, has_label=False, load=False)
        np.testing.assert_allclose(plain({"image": img})["image"].numpy(), 1.0)


@pytest.mark.parametrize("value", [{"mean": [0.5]}, {"mean": [0.5], "std": [0.0]}, {"mean": [1, 2], "std": [1]},
                                   "imagenet", {"mean": ["a"], "std": [1]}])
def test_bad_normalize_values_fail_before_any_data(value):
    with pytest.raises(ConfigError, match="data.preprocessing.normalize"):
        preprocessing_transforms({"normalize": value}, spatial_dims=2, has_label=False, load=False)


def _module(**preprocessing):
    from medeff.data.datamodule import MedeffDataModule

    channels = 3 if preprocessing.get("channels") == "hu_windows" else 1
    return MedeffDataModule("index.json", spatial_dims=3, in_channels=channels, preprocessing=preprocessing)


def test_data_module_takes_the_model_mean_std_unless_the_config_gives_its_own():
    dm = _module(channels="hu_windows")
    dm.use_model_normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert dm.describe()["preprocessing"]["normalize"] == {"mean": [0.485, 0.456, 0.406],
                                                          "std": [0.229, 0.224, 0.225]}
    own = {"mean": [0.1], "std": [0.2]}
    dm = _module(normalize=own)
    dm.use_model_normalization([0.45], [0.22])
    assert dm.describe()["preprocessing"]["normalize"] == own
    dm = _module(normalize=None)
    dm.use_model_normalization([0.45], [0.22])
    assert dm.describe()["preprocessing"]["normalize"] is None
    dm = _module()
    dm.use_model_normalization(None, None)  # the source gave no statistics
    assert dm.describe()["preprocessing"].get("normalize", "auto") == "auto"


def test_hu_windows_need_matching_in_channels():
    from medeff.data.datamodule import MedeffDataModule

    with pytest.raises(ConfigError, match="data.in_channels=3"):
        MedeffDataModule("index.json", spatial_dims=3, in_channels=1, preprocessing={"channels": "hu_windows"})
    MedeffDataModule("index.json", spatial_dims=3, in_channels=2,
                     preprocessing={"channels": "hu_windows", "hu_windows": [[1500, -600], [400, 40]]})
