"""Cross-validation through ``medeff train -m data.fold=0,1``, fold ensembles and flip TTA at prediction."""

from __future__ import annotations

import csv

import pytest
import torch
from .helpers import fast_overrides

from medeff.config import compose
from medeff.engine.ensemble import AveragedNet, flip_views
from medeff.engine.predict import predict, resolve_checkpoints
from medeff.errors import ConfigError


def _rows(path):
    with open(path, newline="") as fh:
        return {r["case_id"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def cv_runs(nodule_index, tmp_path_factory):
    from medeff.cli.main import main

    root = tmp_path_factory.mktemp("cv")
    overrides = ["-m", "experiment=nodule_2d", f"data.index={nodule_index}", "data.fold=0,1", "data.batch_size=8",
                 "logger=none", "callbacks.lr_monitor=null"]
    overrides += [o for o in fast_overrides(root) if not o.startswith("run_dir=")]
    overrides += [f"run_dir={root}/fold${{data.fold}}", f"hydra.sweep.dir={root}/multirun"]
    assert main(["train", *overrides]) == 0
    return root


def test_multirun_trains_each_fold_in_its_folder(cv_runs):
    ckpts = resolve_checkpoints(cv_runs)
    assert [p.split("/")[-3] for p in ckpts] == ["fold0", "fold1"]
    metas = [torch.load(p, map_location="cpu", weights_only=True)["medeff"] for p in ckpts]
    assert [m["config"]["data"]["fold"] for m in metas] == [0, 1]


def test_fold_ensemble_averages_member_probabilities(cv_runs, tmp_path):
    from medeff.demo.phantom import make_nodule_archive

    archive = make_nodule_archive(tmp_path / "new", n_exams=2, seed=5) / "nodule_slices_64x64.npz"
    ckpts = resolve_checkpoints(cv_runs)
    singles = []
    for i, ck in enumerate(ckpts):
        predict({"ckpt": ck, "input": str(archive), "output_dir": str(tmp_path / f"m{i}"), "device": "cpu"})
        singles.append(_rows(tmp_path / f"m{i}" / "predictions.csv"))
    res = predict(compose("predict", [f"ckpt={cv_runs}", f"input={archive}", f"output_dir={tmp_path / 'ens'}",
                                      "device=cpu"]))
    ens = _rows(tmp_path / "ens" / "predictions.csv")
    assert len(res["cases"]) == len(ens) == len(singles[0])
    differs = False
    for cid, row in ens.items():
        members = [float(s[cid]["p_malignant"]) for s in singles]
        assert float(row["p_malignant"]) == pytest.approx(sum(members) / 2, abs=2e-5)
        differs |= abs(members[0] - members[1]) > 1e-4
    assert differs  # two different fold models, so the average is not trivially one of them
    # the list form gives the same result
    predict({"ckpt": ckpts, "input": str(archive), "output_dir": str(tmp_path / "ens2"), "device": "cpu"})
    assert _rows(tmp_path / "ens2" / "predictions.csv") == ens


def test_flip_tta_classification_runs_through_predict(cv_runs, tmp_path):
    from medeff.demo.phantom import make_nodule_archive

    archive = make_nodule_archive(tmp_path / "new", n_exams=2, seed=6) / "nodule_slices_64x64.npz"
    ck = resolve_checkpoints(cv_runs)[0]
    plain = predict({"ckpt": ck, "input": str(archive), "output_dir": str(tmp_path / "a"), "device": "cpu"})
    tta = predict({"ckpt": ck, "input": str(archive), "output_dir": str(tmp_path / "b"), "device": "cpu",
                   "tta": "flip"})
    pa = [r["p_malignant"] for r in plain["cases"]]
    pb = [r["p_malignant"] for r in tta["cases"]]
    assert len(pa) == len(pb) and pa != pb
    assert all(abs(r["p_benign"] + r["p_malignant"] - 1) < 1e-5 for r in tta["cases"])


def test_averaged_net_flips_segmentation_back():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 6, 5, 4)
    pointwise = torch.nn.Conv3d(1, 3, 1)
    views = flip_views(3, "flip")
    assert len(views) == 8 and views[0] == ()
    # a pointwise net commutes with flips: TTA must give back the plain probabilities (flips undone correctly)
    plain = torch.softmax(pointwise(x), 1)
    tta = torch.softmax(AveragedNet([pointwise], views)(x), 1)
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=1e-4)
    # a net that does not commute: the mean of the flipped-back member probabilities
    conv = torch.nn.Conv3d(1, 3, 3, padding=1)
    manual = sum(torch.flip(torch.softmax(conv(torch.flip(x, d) if d else x), 1), d) if d
                 else torch.softmax(conv(x), 1) for d in views) / len(views)
    torch.testing.assert_close(torch.softmax(AveragedNet([conv], views)(x), 1), manual, atol=1e-5, rtol=1e-4)
    # one-logit (sigmoid) outputs are averaged as probabilities too
    one = torch.nn.Conv3d(1, 1, 3, padding=1)
    got = torch.sigmoid(AveragedNet([one, conv.__class__(1, 1, 3, padding=1)])(x))
    assert got.shape == (1, 1, 6, 5, 4) and bool(((got > 0) & (got < 1)).all())
    with pytest.raises(ConfigError, match="tta"):
        flip_views(3, "rotate")


def test_run_folder_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoints/last.ckpt"):
        resolve_checkpoints(tmp_path)
