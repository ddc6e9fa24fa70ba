"""``callbacks.batch_norm_check``: a warning when batch norms train on too few values per channel."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from medeff.config import compose
from medeff.engine.norm_check import BatchNormCheck, values_per_channel
from medeff.errors import ConfigError
from medeff.layers.fused import can_fuse
from medeff.models import create_model


def _first_batch(check: BatchNormCheck, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training step with the callback's hooks around it, as Lightning calls them."""
    check.on_train_batch_start(None, net, None, 0)
    F.cross_entropy(net(x), y).backward()
    check.on_train_batch_end(None, net, None, None, 0)


def _net():
    torch.manual_seed(0)
    return create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2, width=0.25,
                        depth=0.25).train()


def test_warns_when_the_deepest_norms_see_two_values(caplog):
    """32^3 with a batch of 2: the last stages of a 3D B0 are 1x1x1, so their norms see 2 values per channel."""
    net, check = _net(), BatchNormCheck(min_values=8)
    with caplog.at_level(logging.WARNING, logger="medeff.engine.norm_check"):
        _first_batch(check, net, torch.randn(2, 1, 32, 32, 32), torch.tensor([0, 1]))
    assert min(check.seen.values()) == 2
    # the norms of the fused CPU BN+SiLU are seen too (the fused path steps aside for the checked batch)
    assert "bn1" in check.seen and "bn2" in check.seen
    assert check.seen["bn1"] == 2 * 16 ** 3
    (record,) = [r for r in caplog.records if "batch norm" in r.getMessage()]
    text = record.getMessage()
    assert "fewest: 2" in text and "data.patch_size" in text and "bn2" in text


def test_quiet_for_large_enough_batches_and_only_the_first_batch_is_watched(caplog):
    net, check = _net(), BatchNormCheck(min_values=8)
    with caplog.at_level(logging.WARNING, logger="medeff.engine.norm_check"):
        _first_batch(check, net, torch.randn(2, 1, 64, 64, 64), torch.tensor([0, 1]))  # deepest 2^3 x 2 = 16
        assert min(check.seen.values()) == 16
        seen = dict(check.seen)
        _first_batch(check, net, torch.randn(2, 1, 32, 32, 32), torch.tensor([0, 1]))  # later batches: no hooks
    assert check.seen == seen
    assert not [r for r in caplog.records if "batch norm" in r.getMessage()]
    # hooks removed and the fused path back after the watched batch
    bn = net.bn1
    assert can_fuse(bn, net.act1, torch.zeros(2, 1, 2, 2, 2))


def test_an_exception_in_the_watched_batch_leaves_nothing_behind():
    net, check = _net(), BatchNormCheck()
    check.on_train_batch_start(None, net, None, 0)
    assert not can_fuse(net.bn1, net.act1, torch.zeros(2, 1, 2, 2, 2))
    check.on_exception(None, net, RuntimeError("boom"))
    assert can_fuse(net.bn1, net.act1, torch.zeros(2, 1, 2, 2, 2))
    net(torch.randn(2, 1, 32, 32, 32))
    assert check.seen == {}


def test_values_per_channel_and_settings():
    assert values_per_channel(torch.zeros(4, 3, 2, 5)) == 40
    assert values_per_channel(torch.zeros(6, 7)) == 6
    for bad in (1, 0, 2.5, True, "8"):
        with pytest.raises(ConfigError, match="min_values"):
            BatchNormCheck(min_values=bad)


def test_on_in_the_default_training_callbacks():
    cfg = compose("train")
    assert cfg.callbacks.batch_norm_check._target_ == "medeff.engine.norm_check.BatchNormCheck"
    assert cfg.callbacks.batch_norm_check.min_values == 8


def test_a_resumed_run_does_not_watch_again():
    """The state travels in checkpoints: a resumed run's first batch runs fused, as in the uninterrupted run."""
    net, check = _net(), BatchNormCheck()
    _first_batch(check, net, torch.randn(2, 1, 64, 64, 64), torch.tensor([0, 1]))
    resumed = BatchNormCheck()
    resumed.load_state_dict(check.state_dict())
    resumed.on_train_batch_start(None, net, None, 0)
    assert can_fuse(net.bn1, net.act1, torch.zeros(2, 1, 2, 2, 2)) and resumed.seen == {}
    fresh = BatchNormCheck()
    fresh.load_state_dict({})
    assert not fresh.done
