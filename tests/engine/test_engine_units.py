"""Losses, schedules, metrics, atomic checkpoint writes and the CLI wrappers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medeff.engine.checkpoint import AtomicCheckpointIO, plain
from medeff.engine.losses import ClassificationLoss, DeepSupervisionLoss, FocalLoss
from medeff.engine.metrics import aggregate_by_case, classification_metrics
from medeff.engine.schedulers import warmup_cosine
from medeff.errors import ConfigError


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    w = torch.tensor([1.0, 2.0, 0.5])
    assert torch.allclose(FocalLoss(0.0)(logits, target), F.cross_entropy(logits, target))
    assert torch.allclose(FocalLoss(0.0, weight=w)(logits, target), F.cross_entropy(logits, target, weight=w))
    assert FocalLoss(2.0)(logits, target) < F.cross_entropy(logits, target)


def test_classification_loss_variants():
    logits, target = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    assert torch.isfinite(ClassificationLoss("bce", num_classes=2)(logits, target))
    assert torch.isfinite(ClassificationLoss("bce", num_classes=1)(logits[:, :1], target))
    with pytest.raises(ConfigError, match="class_weights"):
        ClassificationLoss("ce", num_classes=2, class_weights=[1.0])
    with pytest.raises(ConfigError, match="focal"):
        ClassificationLoss("focal", num_classes=1)
    with pytest.raises(ConfigError, match="Unknown task.loss"):
        ClassificationLoss("hinge", num_classes=2)


def test_deep_supervision_weights_scales():
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    full = torch.randn(2, 3, 8, 8, 8)
    coarse = torch.randn(2, 3, 4, 4, 4)
    loss = DeepSupervisionLoss([1.0, 0.5])
    single = loss(full, target)
    both = loss([full, coarse], target)
    coarse_only = loss.base(coarse, F.interpolate(target.float(), size=(4, 4, 4), mode="nearest").long())
    assert torch.allclose(both, (single + 0.5 * coarse_only) / 1.5, atol=1e-5)


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_case_level_metrics():
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    ids, p, t, n = aggregate_by_case(probs, ["a", "a", "b", "b"], np.array([0, 0, 1, 1]))
    assert ids == ["a", "b"] and list(n) == [2, 2] and list(t) == [0, 1]
    np.testing.assert_allclose(p, [[0.8, 0.2], [0.3, 0.7]])
    m = classification_metrics(p, t)
    assert m["auc"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert np.isnan(classification_metrics(p, np.array([1, 1]))["auc"])


def test_atomic_checkpoint_io_never_leaves_a_partial_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(2))

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(2))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_plain_refuses_objects():
    assert plain({"a": (1, np.float32(2.5)), "b": [np.int64(3)]}) == {"a": [1, 2.5], "b": [3]}
    with pytest.raises(TypeError):
        plain({"x": object()})


def test_cli_reports_missing_index_without_traceback(capsys):
    from medeff.cli.main import main

    assert main(["train", "experiment=nodule_2d"]) == 2
    err = capsys.readouterr().err
    assert "data.index" in err and "Traceback" not in err
    assert main(["predict", "input=x.nii.gz", "ckpt=/nonexistent/model.ckpt"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_print_config(capsys):
    from medeff.cli.main import main

    assert main(["train", "--print-config", "experiment=organ_seg_3d", "data.index=i.json"]) == 0
    out = capsys.readouterr().out
    assert "SegmentationTask" in out and "RandCrop" not in out and "pos_neg" in out
