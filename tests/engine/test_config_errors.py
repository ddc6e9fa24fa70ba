"""A bad key or value anywhere in a training config gives a ConfigError naming the key and the valid options,
before any training step."""

from __future__ import annotations

import pytest
from .helpers import fast_overrides

from medeff.config import compose
from medeff.engine.train import train
from medeff.errors import ConfigError


@pytest.mark.parametrize("override, valid", [
    ("model=efficientnet_b9", "efficientnet_b0"),
    ("optimizer=adamx", "adamw"),
    ("scheduler=cosine", "warmup_cosine"),
    ("callbacks=progresive", "progressive"),
    ("logger=wandb", "mlflow"),
    ("augmentation=fancy", "slice_2d"),
])
def test_unknown_group_option_lists_the_options(override, valid):
    group, bad = override.split("=")
    with pytest.raises(ConfigError) as info:
        compose("train", ["data.index=x.json", override])
    text = str(info.value)
    assert f"{group}/{bad}" in text and f"Available options in '{group}'" in text and valid in text


def _train(nodule_index, tmp_path, *overrides: str):
    cfg = compose("train", ["experiment=nodule_2d", f"data.index={nodule_index}", "logger=none",
                            "callbacks.lr_monitor=null", *overrides] + fast_overrides(tmp_path / "run"))
    return train(cfg)


@pytest.mark.parametrize("override, must_contain", [
    ("model.name=efficientnet_b9", ["model.name", "efficientnet_b7", "efficientnetv2_s"]),
    ("task.loss=dice_focal_typo", ["task.loss", "dice_focal_typo", "'ce'", "'bce'", "'focal'"]),
    ("+model.norm=batchh", ["norm", "batchh", "'batch'", "group", "instance"]),
    ("+model.act=swishh", ["act", "swishh", "'swish'", "silu"]),
    ("scheduler.interval=steps", ["scheduler", "'step'", "'epoch'", "steps"]),
    ("optimizer.lr=abc", ["optimizer", "AdamW", "optimizer.*"]),
    ("data.preprocessing.intensity.mode=windw", ["data.preprocessing.intensity.mode", "windw", "window", "zscore"]),
    ("+augmentation.flip_probability=0.5", ["augmentation", "flip_probability", "flip_prob"]),
    ("+data.preprocessing.spacingg=[1,1]", ["data.preprocessing", "spacingg", "spacing"]),
])
def test_bad_value_names_the_key_and_the_options(nodule_index, tmp_path, override, must_contain):
    with pytest.raises(ConfigError) as info:
        _train(nodule_index, tmp_path, override)
    text = str(info.value)
    for part in must_contain:
        assert part in text, (part, text)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_segmentation_sliding_window_mode_is_checked_before_training(organ_index, tmp_path):
    cfg = compose("train", ["experiment=organ_seg_3d", f"data.index={organ_index}", "data.patch_size=[16,16,16]",
                            "task.sw_mode=gausian", "logger=none", "callbacks.lr_monitor=null"]
                  + fast_overrides(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"gausian.*task\.sw_mode.*'gaussian'.*constant, gaussian"):
        train(cfg)


def test_segmentation_has_no_loss_key_and_says_how_to_append():
    with pytest.raises(ConfigError, match=r"(?s)task\.loss.*\+task\.loss"):
        compose("train", ["data.index=x.json", "experiment=organ_seg_3d", "task.loss=dice"])
