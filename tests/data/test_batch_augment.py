"""Augmentation of whole 2D batches (data.batch_augmentation): the per-image operations, seeding, and the data
module moving augmentation and normalisation out of the loader."""

from __future__ import annotations

import pytest
import torch
from index_fixtures import phantom_nodule_index

from medeff.data.batch_augment import BatchAugment
from medeff.errors import ConfigError

SLICE_2D = {"name": "slice_2d", "flip_prob": 0.5, "flip_axes": [0, 1], "rot90_prob": 0.5, "rot90_axes": [0, 1],
            "rotate_prob": 0.3, "rotate_deg": 15, "intensity_prob": 0.5, "scale": 0.1, "shift": 0.05,
            "noise_prob": 0.2, "noise_std": 0.02}


def _batch(n=16, c=3, size=12):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(0))


def test_same_seed_same_batches_and_reseed_replays():
    x = _batch()
    a, b = BatchAugment(SLICE_2D, seed=5), BatchAugment(SLICE_2D, seed=5)
    first = a(x)
    torch.testing.assert_close(first, b(x))
    assert not torch.equal(first, x)
    second = a(x)
    assert not torch.equal(first, second)  # the generator moves on between batches
    a.reseed(5)
    torch.testing.assert_close(a(x), first)
    assert not torch.equal(BatchAugment(SLICE_2D, seed=6)(x), first)
    torch.testing.assert_close(x, _batch())  # the input is left alone


def test_flips_and_turns_are_exact_per_image():
    x = _batch()
    flipped = BatchAugment({"flip_prob": 1.0, "flip_axes": [1]}, seed=0)(x)
    torch.testing.assert_close(flipped, x.flip(3))
    turned = BatchAugment({"rot90_prob": 1.0}, seed=0)(x)
    ks = []
    for i in range(x.shape[0]):
        match = [k for k in (1, 2, 3) if torch.equal(turned[i], torch.rot90(x[i], k, (1, 2)))]
        assert len(match) == 1
        ks += match
    assert set(ks) == {1, 2, 3}
    half = BatchAugment({"flip_prob": 0.5, "flip_axes": [0]}, seed=0)(x)
    same = [torch.equal(half[i], x[i]) for i in range(x.shape[0])]
    assert 0 < sum(same) < x.shape[0]  # per image, not per batch


def test_intensity_noise_and_normalisation_bounds():
    x = torch.full((64, 1, 8, 8), 0.5)
    out = BatchAugment({"intensity_prob": 1.0, "scale": 0.1, "shift": 0.05}, seed=1)(x)
    per_image = out.flatten(1)
    assert torch.all(per_image.std(1) < 1e-6)  # one factor and one offset per image
    values = per_image[:, 0]
    assert values.min() >= 0.5 * 0.9 - 0.05 - 1e-6 and values.max() <= 0.5 * 1.1 + 0.05 + 1e-6
    assert values.std() > 0.01
    noisy = BatchAugment({"noise_prob": 1.0, "noise_std": 0.02}, seed=1)(x)
    assert 0 < (noisy - x).std() < 0.02
    norm = BatchAugment({}, normalize=([0.25], [0.5]), seed=0)(x)
    torch.testing.assert_close(norm, torch.full_like(x, 0.5))


def test_rotation_keeps_the_centre_and_the_size():
    x = torch.zeros(4, 1, 15, 15)
    x[:, :, 7, 7] = 1.0
    out = BatchAugment({"rotate_prob": 1.0, "rotate_deg": 15}, seed=2)(x)
    assert out.shape == x.shape
    assert torch.all(out[:, 0, 7, 7] > 0.5)
    assert not torch.equal(out, x)


def test_unsupported_settings_are_config_errors():
    with pytest.raises(ConfigError, match="crop"):
        BatchAugment({"crop": {"mode": "pos_neg", "num_samples": 2}})
    BatchAugment({"crop": {"mode": "none"}})
    with pytest.raises(ConfigError, match="axis 2"):
        BatchAugment({"flip_prob": 0.5, "flip_axes": [2]})
    with pytest.raises(ConfigError, match="square"):
        BatchAugment({"rot90_prob": 1.0})(torch.zeros(2, 1, 8, 10))


@pytest.fixture(scope="module")
def nodule_index(tmp_path_factory):
    return phantom_nodule_index(tmp_path_factory.mktemp("nodules"), n_exams=8, malignant_fraction=0.45)


def _module(index, batch_aug, **kw):
    from medeff.data.datamodule import MedeffDataModule

    dm = MedeffDataModule(str(index), kind="archive", task="classification", spatial_dims=2, in_channels=3,
                          context_slices=1, batch_size=4, seed=3, augmentation=SLICE_2D,
                          preprocessing={"intensity": {"mode": "window", "window": [0, 255]},
                                         "normalize": {"mean": [0.5], "std": [0.25]}},
                          batch_augmentation=batch_aug, **kw)
    dm.setup("fit")
    return dm


def test_data_module_moves_augmentation_to_the_batch(nodule_index):
    dm = _module(nodule_index, True)
    plain = _module(nodule_index, False)
    item = dm.train_ds[0]["image"]
    assert float(item.min()) >= 0.0 and float(item.max()) <= 1.0  # windowed, neither augmented nor normalised
    torch.testing.assert_close(dm.train_ds[0]["image"], item)  # deterministic item
    batches = [dm.augment_batch(b)["image"] for b in dm.train_dataloader()]
    again = [dm.augment_batch(b)["image"] for b in dm.train_dataloader()]  # same epoch (0) -> same data
    for a, b in zip(batches, again):
        torch.testing.assert_close(a, b)
    assert float(batches[0].min()) < 0.0  # normalised after augmentation
    val = next(iter(dm.val_dataloader()))["image"]
    torch.testing.assert_close(val, next(iter(plain.val_dataloader()))["image"])
    assert plain.augment_batch({"image": val})["image"] is val
    # under a Trainer the hook augments training batches only
    from types import SimpleNamespace

    batch = {"image": val}
    dm.trainer = SimpleNamespace(training=False)
    assert dm.on_after_batch_transfer(batch, 0) is batch
    dm.trainer = SimpleNamespace(training=True)
    assert not torch.equal(dm.on_after_batch_transfer(batch, 0)["image"], val)


def test_batch_augmentation_needs_2d_classification(tmp_path):
    from medeff.data.datamodule import MedeffDataModule

    with pytest.raises(ConfigError, match="batch_augmentation"):
        MedeffDataModule("x.json", kind="volume", task="segmentation", spatial_dims=3, batch_augmentation=True)


def test_num_workers_auto_leaves_a_core(monkeypatch):
    import os

    import medeff.data.datamodule as D

    assert 1 <= D.usable_cpus() <= (os.cpu_count() or 1)
    monkeypatch.setattr(D, "usable_cpus", lambda: 2)
    assert D.resolve_num_workers("auto") == 1 and D.resolve_num_workers(3) == 3
    monkeypatch.setattr(D, "usable_cpus", lambda: 1)
    assert D.resolve_num_workers("auto") == 0
    with pytest.raises(ConfigError, match="num_workers"):
        D.resolve_num_workers("many")


def test_training_run_augments_batches_through_the_hook(nodule_index, tmp_path, monkeypatch):
    """`medeff train ... data.batch_augmentation=true`: the trainer's training batches pass the augmenter, the
    validation batches do not."""
    from medeff.config import compose
    from medeff.data.batch_augment import BatchAugment
    from medeff.engine.train import train

    calls: list[int] = []
    real = BatchAugment.__call__

    def counting(self, x):
        calls.append(int(x.shape[0]))
        return real(self, x)

    monkeypatch.setattr(BatchAugment, "__call__", counting)
    cfg = compose("train", ["experiment=lidc_nodule", f"data.index={nodule_index}", "data.batch_size=4",
                            "data.batch_augmentation=true", "model.width=0.25", "model.depth=0.34",
                            "debug=fast", f"run_dir={tmp_path}", "trainer.accelerator=cpu",
                            "+trainer.enable_model_summary=false", "trainer.gradient_clip_val=null"])
    result = train(cfg)
    assert calls == [4, 4]  # limit_train_batches=2; the two validation batches are not augmented
    assert result["last_checkpoint"]
