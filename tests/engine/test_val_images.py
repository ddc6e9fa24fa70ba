"""Pictures of validation cases in TensorBoard (and MLflow) during training: callbacks.val_images."""

from __future__ import annotations

import numpy as np
import pytest

from medeff.config import compose
from medeff.engine.train import train
from medeff.engine.val_images import ValidationImages, log_panels, panel
from medeff.errors import ConfigError

from .helpers import fast_overrides

SEG = ["experiment=organ_seg_3d", "data.patch_size=[16,16,16]", "data.batch_size=1",
       "data.preprocessing.spacing=[10.0,12.0,12.0]", "augmentation.crop.num_samples=2",
       "trainer.check_val_every_n_epoch=1"]


def test_panel_shows_reference_and_prediction_in_colour():
    image = np.random.default_rng(0).normal(size=(12, 10, 6)).astype(np.float32)
    ref = np.zeros((12, 10, 6), np.int64)
    ref[2:6, 2:6, 3] = 1
    pred = np.zeros_like(ref)
    pred[6:10, 4:8, 3] = 2
    pic = panel(image, ref, pred)
    assert pic.dtype == np.uint8 and pic.shape == (10, 3 * 12 + 4, 3)  # rot90 of a 12 x 10 slice, three panels
    grey, left, right = pic[:, :12], pic[:, 14:26], pic[:, 28:]
    assert (grey[..., 0] == grey[..., 1]).all()  # the image panel is grey
    coloured = lambda p: (p[..., 0] != p[..., 1]) | (p[..., 1] != p[..., 2])  # noqa: E731
    assert coloured(left).sum() == 16 and coloured(right).sum() == 16
    assert not (coloured(left) & coloured(right)).any()  # reference and prediction at their own places


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="val_images"):
        ValidationImages(n_cases=-1)


def test_tensorboard_gets_validation_images(organ_index, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    cfg = compose("train", SEG + [f"data.index={organ_index}", "logger=tensorboard", "callbacks.val_images.n_cases=2",
                                  "trainer.max_epochs=2"] + fast_overrides(run_dir))
    train(cfg)
    events = sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()["images"]
    assert "val_images/case0" in tags  # the organ index has one validation case (fold 0)
    shots = acc.Images("val_images/case0")
    assert len(shots) == 2 and shots[0].step < shots[1].step  # one per validation epoch, no sanity-check image
    assert shots[0].width > shots[0].height and shots[0].encoded_image_string[:4] == b"\x89PNG"


def test_mlflow_gets_validation_images_as_artifacts(tmp_path):
    pytest.importorskip("mlflow")
    from medeff.engine.mlflow_logger import mlflow_logger

    logger = mlflow_logger(save_dir=tmp_path / "mlruns", experiment_name="t", run_name="r")

    class Trainer:
        loggers = [logger]
        global_step, current_epoch = 7, 3

    pic = panel(np.zeros((8, 8, 4)), np.ones((8, 8, 4), int), np.zeros((8, 8, 4), int))
    log_panels(Trainer(), [pic])
    files = [f.path for f in logger.experiment.list_artifacts(logger.run_id, "val_images")]
    assert files == ["val_images/epoch003_case0.png"]
