"""``callbacks=progressive``: input size, dropout, drop-path and augmentation follow the EfficientNetV2 schedule
during training, while validation always sees the final size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from .helpers import fast_overrides

from medeff.config import compose
from medeff.engine.progressive import ProgressiveLearning, linear_value, stage_sizes
from medeff.engine.train import train
from medeff.errors import ConfigError


class InputRecorder(L.Callback):
    """Records, at every forward of the network, the input size, train/eval mode, the head dropout, the per-block
    drop-path rates and the rotation range of the live training transforms; written as JSON at the end of fit."""

    def __init__(self, path: str) -> None:
        self.path, self.rows, self.handle = Path(path), [], None

    def on_fit_start(self, trainer, pl_module) -> None:
        from medeff.models.efficientnet import EfficientNet

        net = pl_module.net
        enc = next(m for m in net.modules() if isinstance(m, EfficientNet))
        blocks = [b for stage in enc.blocks for b in stage]

        def hook(module, args) -> None:
            rot = [t for t in trainer.datamodule.train_ds.transform.transforms if type(t).__name__ == "RandRotated"]
            self.rows.append({
                "epoch": int(trainer.current_epoch), "training": bool(module.training),
                "size": list(args[0].shape[2:]),
                "dropout": [m.p for m in net.modules() if isinstance(m, nn.Dropout)],
                "drop_path": [float(getattr(b.drop_path, "rate", 0.0)) for b in blocks],
                "skip": [bool(b.has_skip) for b in blocks],
                "rotate_rad": float(rot[0].rand_rotate.range_x[1]) if rot else None,
            })

        self.handle = net.register_forward_pre_hook(hook)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.handle.remove()
        self.path.write_text(json.dumps(self.rows))


def _record(path: Path) -> list[str]:
    return [f"+callbacks.recorder._target_={__name__}.InputRecorder", f"+callbacks.recorder.path={path}",
            f"trusted_targets=[{__name__}.InputRecorder]"]


def _by_epoch(rows: list[dict], training: bool) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in rows:
        if r["training"] == training:
            out.setdefault(r["epoch"], []).append(r)
    return out


def test_classification_schedule_follows_the_stages(nodule_index, tmp_path):
    rec = tmp_path / "rows.json"
    cfg = compose("train", ["experiment=nodule_2d", f"data.index={nodule_index}", "data.batch_size=8",
                            "callbacks=progressive", "callbacks.progressive.num_stages=3",
                            "callbacks.progressive.start_size=32", "logger=none", "callbacks.lr_monitor=null"]
                  + fast_overrides(tmp_path / "run") + ["trainer.max_epochs=3"] + _record(rec))
    train(cfg)
    rows = json.loads(rec.read_text())
    train_rows, val_rows = _by_epoch(rows, True), _by_epoch(rows, False)
    assert sorted(train_rows) == [0, 1, 2] and sorted(val_rows) == [0, 1, 2]
    sizes = {0: [32, 32], 1: [48, 48], 2: [64, 64]}
    dropout = {0: 0.1, 1: 0.2, 2: 0.3}
    drop_path = {0: 0.0, 1: 0.1, 2: 0.2}
    rotate = {e: math.radians(15 * f) for e, f in ((0, 0.5), (1, 0.75), (2, 1.0))}  # slice_2d: rotate_deg 15
    for epoch, batches in train_rows.items():
        assert len(batches) == 2
        for r in batches:
            assert r["size"] == sizes[epoch], (epoch, r["size"])
            assert r["dropout"] == [pytest.approx(dropout[epoch])]
            n = len(r["drop_path"])
            want = [drop_path[epoch] * i / n if skip else 0.0 for i, skip in enumerate(r["skip"])]
            assert r["drop_path"] == pytest.approx(want), epoch
            assert any(r["skip"]) and max(r["drop_path"]) == pytest.approx(max(want))
            assert r["rotate_rad"] == pytest.approx(rotate[epoch])
    for batches in val_rows.values():  # validation: always the final size
        assert {tuple(r["size"]) for r in batches} == {(64, 64)}


def test_segmentation_crop_mode_keeps_labels_aligned(organ_index, tmp_path):
    """3D U-Net: 8^3 windows cut from the 16^3 patches in stage 0 (the loss needs image and label to agree), the
    full patches in stage 1, and 16^3 sliding windows in validation."""
    rec = tmp_path / "rows.json"
    cfg = compose("train", ["experiment=organ_seg_3d", f"data.index={organ_index}", "data.patch_size=[16,16,16]",
                            "data.batch_size=1", "data.preprocessing.spacing=[10.0,12.0,12.0]",
                            "augmentation.crop.num_samples=2", "trainer.check_val_every_n_epoch=1",
                            "trainer.limit_train_batches=1", "callbacks=progressive",
                            "callbacks.progressive.num_stages=2", "callbacks.progressive.mode=crop",
                            "callbacks.progressive.dropout=null", "callbacks.progressive.start_scale=0.5",
                            "logger=none", "callbacks.lr_monitor=null"]
                  + fast_overrides(tmp_path / "run") + ["trainer.max_epochs=2"] + _record(rec))
    result = train(cfg)
    assert math.isfinite(result["metrics"]["train/loss_epoch"])
    rows = json.loads(rec.read_text())
    train_rows, val_rows = _by_epoch(rows, True), _by_epoch(rows, False)
    assert [r["size"] for r in train_rows[0]] == [[8, 8, 8]]
    assert [r["size"] for r in train_rows[1]] == [[16, 16, 16]]
    assert {tuple(r["size"]) for e in val_rows for r in val_rows[e]} == {(16, 16, 16)}
    assert max(train_rows[0][0]["drop_path"]) == 0.0 and max(train_rows[1][0]["drop_path"]) > 0.0


def test_schedule_arithmetic():
    assert stage_sizes([64, 64], 3, start_size=[32, 32]) == [(32, 32), (48, 48), (64, 64)]
    assert stage_sizes([96, 96, 64], 4, start_scale=0.5) == [(48, 48, 32), (64, 64, 40), (80, 80, 56), (96, 96, 64)]
    assert stage_sizes([20, 20], 2, start_scale=0.1) == [(8, 8), (20, 20)]  # never below the divisor
    assert linear_value(0.1, 0.3, 1, 3) == pytest.approx(0.2) and linear_value(0.1, 0.3, 0, 1) == 0.3
    cb = ProgressiveLearning(num_stages=4)
    assert [cb.stage_of(e, 10) for e in range(10)] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert [ProgressiveLearning(num_stages=3, epochs_per_stage=2).stage_of(e, None) for e in range(8)] == \
        [0, 0, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ConfigError, match="max_epochs"):
        cb.stage_of(0, -1)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "zoom"}, "mode"), ({"dropout": [0.1, 1.2]}, "dropout"), ({"num_stages": 0}, "num_stages"),
    ({"drop_path": "high"}, "drop_path"), ({"start_scale": 0.0}, "start_scale"),
])
def test_bad_options_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ProgressiveLearning(**kwargs)


def test_unknown_augmentation_key_names_the_valid_ones(nodule_index, tmp_path):
    cfg = compose("train", ["experiment=nodule_2d", f"data.index={nodule_index}", "callbacks=progressive",
                            "+callbacks.progressive.augmentation.rotate_degrees=[5,15]", "logger=none",
                            "callbacks.lr_monitor=null"] + fast_overrides(tmp_path / "run"))
    with pytest.raises(ConfigError, match="rotate_degrees.*rotate_deg"):
        train(cfg)


def test_drop_path_needs_a_medeff_efficientnet():
    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, 2)

    cb = ProgressiveLearning(drop_path=[0.0, 0.2], dropout=None)
    with pytest.raises(ConfigError, match="drop_path=null"):
        cb._set_drop_path(Tiny().net, 0.1)


@pytest.mark.slow
def test_resume_into_a_later_stage_matches_the_uninterrupted_run(nodule_index, tmp_path):
    """Stage 0 (epoch 0) then stage 1 (epoch 1, other size, rates and augmentation): stopping after epoch 0 and
    resuming with ckpt_path=last ends with the same weights as the run that never stopped."""
    def run(run_dir: Path, epochs: int, *extra: str) -> dict:
        cfg = compose("train", ["experiment=nodule_2d", f"data.index={nodule_index}", "data.batch_size=8",
                                "callbacks=progressive", "callbacks.progressive.num_stages=2",
                                "callbacks.progressive.epochs_per_stage=1", "callbacks.progressive.start_size=32",
                                "logger=none", "callbacks.lr_monitor=null", "trainer.deterministic=true",
                                "scheduler=none", *extra] + fast_overrides(run_dir) + [f"trainer.max_epochs={epochs}"])
        return train(cfg)

    ref = run(tmp_path / "ref", 2)
    run(tmp_path / "cut", 1)
    resumed = run(tmp_path / "cut", 2, "ckpt_path=last")

    def weights(path):
        sd = torch.load(path, map_location="cpu", weights_only=True)
        return sd["epoch"], {k: v for k, v in sd["state_dict"].items() if k.startswith("net.")}

    (e_ref, a), (e_res, b) = weights(ref["last_checkpoint"]), weights(resumed["last_checkpoint"])
    assert e_ref == e_res == 1 and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
