"""Minority-class oversampling (data.oversample): each image of a named class drawn several times per epoch."""

from collections import Counter

import pytest
from index_fixtures import phantom_nodule_index

from medeff.data.datamodule import EpochSeededSampler, oversampled_indices
from medeff.errors import ConfigError


def test_oversampled_indices_repeat_the_named_class():
    labels = [0, 1, 2, 1, 0]
    out = oversampled_indices(labels, {"benign": 3}, ["normal", "benign", "malignant"])
    assert Counter(out) == {0: 1, 1: 3, 2: 1, 3: 3, 4: 1}
    assert oversampled_indices(labels, {2: 2}) == [0, 1, 2, 2, 3, 4]
    assert oversampled_indices(labels, None) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("repeats, match", [({"cyst": 2}, "cyst"), ({"benign": 1.5}, "whole number"),
                                            ({"benign": 0}, "whole number"), ({"benign": True}, "whole number")])
def test_oversample_errors_name_the_key(repeats, match):
    with pytest.raises(ConfigError, match=match):
        oversampled_indices([0, 1], repeats, ["normal", "benign"])


def test_epoch_sampler_permutes_the_repeated_positions_per_epoch():
    idx = oversampled_indices([0, 1, 0, 1], {1: 3})
    epoch = [0]
    s = EpochSeededSampler(4, seed=5, epoch_fn=lambda: epoch[0], indices=idx)
    first = list(s)
    assert len(s) == 8 and sorted(first) == sorted(idx)
    assert list(s) == first  # same (seed, epoch): same order (exact resume)
    epoch[0] = 1
    assert sorted(list(s)) == sorted(idx) and list(s) != first
    assert list(EpochSeededSampler(3, seed=0, epoch_fn=lambda: 0)) != [] and len(EpochSeededSampler(3, 0, int)) == 3


@pytest.fixture(scope="module")
def nodule_index(tmp_path_factory):
    return phantom_nodule_index(tmp_path_factory.mktemp("nodules"), n_exams=6, malignant_fraction=0.3)


@pytest.mark.parametrize("seed", [3, None])
def test_data_module_draws_the_oversampled_class_more_often(nodule_index, seed):
    from medeff.data.datamodule import MedeffDataModule

    def module(oversample):
        dm = MedeffDataModule(str(nodule_index), kind="archive", task="classification", spatial_dims=2,
                              in_channels=3, context_slices=1, batch_size=2, seed=seed,
                              preprocessing={"intensity": {"mode": "window", "window": [0, 255]}},
                              oversample=oversample)
        dm.setup("fit")
        return dm

    plain, over = module(None), module({"malignant": 3})
    base = Counter(int(y) for b in plain.train_dataloader() for y in b["label"])
    seen = Counter(int(y) for b in over.train_dataloader() for y in b["label"])
    n_mal = sum(int(it["label"]) == 1 for it in over.train_ds.data)
    n_ben = len(over.train_ds) - n_mal
    assert n_mal > 0 and n_ben > 0
    # drop_last may drop at most one batch of the epoch
    assert 3 * n_mal + n_ben - 2 < sum(seen.values()) <= 3 * n_mal + n_ben
    assert seen[1] / sum(seen.values()) > base[1] / sum(base.values())


def test_oversample_is_for_classification():
    from medeff.data.datamodule import MedeffDataModule

    with pytest.raises(ConfigError, match="oversample"):
        MedeffDataModule("x.json", kind="volume", task="segmentation", spatial_dims=3, oversample={"1": 2})
