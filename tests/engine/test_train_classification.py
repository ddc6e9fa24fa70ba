"""Few-step classification training on a phantom nodule archive: checkpoints, predict, resume, refusal."""

from __future__ import annotations

import csv
import json

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from .helpers import fast_overrides

from medeff.config import compose
from medeff.engine.checkpoint import load_checkpoint
from medeff.engine.predict import predict
from medeff.engine.train import train
from medeff.errors import CheckpointError


@pytest.fixture(scope="module")
def cls_run(nodule_index, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cls_run")
    overrides = ["experiment=nodule_2p5d", f"data.index={nodule_index}", "data.batch_size=8",
                 "trainer.limit_train_batches=2", "trainer.limit_val_batches=null"] + fast_overrides(run_dir)
    cfg = compose("train", overrides)
    return train(cfg), overrides, run_dir


def test_training_writes_best_and_last_with_metrics(cls_run):
    result, _, run_dir = cls_run
    assert result["last_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert result["best_checkpoint"] and result["best_checkpoint"].endswith("epoch_000.ckpt")
    for key in ("val/auc", "val/balanced_accuracy", "val/loss", "train/loss_epoch"):
        assert key in result["metrics"], sorted(result["metrics"])
    assert 0.0 <= result["metrics"]["val/balanced_accuracy"] <= 1.0
    assert result["optimized_metric"] == result["metrics"]["val/auc"]
    # the resolved configuration of the run sits beside its checkpoints
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["run_dir"] == str(run_dir) and saved["data"]["context_slices"] == 1
    assert "${" not in (run_dir / "config.yaml").read_text()


def test_checkpoint_describes_itself_and_loads_weights_only(cls_run):
    result, _, _ = cls_run
    ckpt = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    meta = ckpt["medeff"]
    assert meta["task"] == "classification"
    assert meta["class_names"] == ["benign", "malignant"]
    assert meta["data"]["kind"] == "archive" and meta["data"]["context_slices"] == 1
    assert meta["data"]["preprocessing"]["intensity"]["window"] == [0, 255]
    assert meta["config"]["model"]["in_channels"] == 3
    assert meta["config"]["optimizer"]["lr"] == pytest.approx(1e-3)
    assert {"medeff", "torch", "monai", "lightning"} <= set(meta["versions"])
    assert any(k.startswith("net.") for k in ckpt["state_dict"])
    assert not [p for p in Path(result["last_checkpoint"]).parent.iterdir() if p.name.startswith(".tmp-")]


def test_predict_writes_csv_and_json_per_nodule(cls_run, tmp_path):
    from medeff.demo.phantom import make_nodule_archive

    result, _, _ = cls_run
    archive = make_nodule_archive(tmp_path / "new", n_exams=3, seed=7) / "nodule_slices_64x64.npz"
    out = tmp_path / "pred"
    res = predict(compose("predict", [f"ckpt={result['best_checkpoint']}", f"input={archive}",
                                      f"output_dir={out}", "device=cpu", "threshold=0.4"]))
    with np.load(archive) as z:
        n_nodules = len(set(z["nodule_key"].astype(str)))
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n_nodules == len(res["cases"])
    assert list(rows[0]) == ["case_id", "p_benign", "p_malignant", "predicted_class", "predicted_index", "score",
                             "threshold", "decision", "n_items"]
    for row in rows:
        p = float(row["p_benign"]) + float(row["p_malignant"])
        assert p == pytest.approx(1.0, abs=1e-5)
        assert row["decision"] == ("flag" if float(row["score"]) >= 0.4 else "routine")
        assert float(row["score"]) == pytest.approx(float(row["p_malignant"]))
        assert int(row["n_items"]) >= 3
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["threshold"] == 0.4 and doc["class_names"] == ["benign", "malignant"]
    assert len(doc["cases"]) == n_nodules
    # writing again without overwrite is refused; with overwrite it works
    from medeff.errors import OutputExistsError

    with pytest.raises(OutputExistsError):
        predict(compose("predict", [f"ckpt={result['best_checkpoint']}", f"input={archive}", f"output_dir={out}"]))


def test_resume_from_last_continues_the_run(cls_run):
    result, overrides, _ = cls_run
    before = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    cfg = compose("train", overrides + ["ckpt_path=last", "trainer.max_epochs=2"])
    train(cfg)
    after = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    assert before["global_step"] == 2 and before["epoch"] == 0  # limit_train_batches=2, one epoch
    assert after["global_step"] == before["global_step"] + 2  # continued: one more epoch, not two
    assert after["epoch"] >= 1


def test_mismatched_checkpoint_is_refused(cls_run, organ_index, tmp_path):
    result, _, _ = cls_run
    ckpt = result["last_checkpoint"]
    seg = compose("train", ["experiment=organ_seg_3d", f"data.index={organ_index}", "ckpt_path=" + ckpt]
                  + fast_overrides(tmp_path))
    with pytest.raises(CheckpointError, match="trained for task 'classification', not 'segmentation'"):
        train(seg)
    with pytest.raises(CheckpointError, match="class_names"):
        load_checkpoint(ckpt, class_names=["normal", "tumour"])
    with pytest.raises(CheckpointError, match="class_names"):
        predict(compose("predict", [f"ckpt={ckpt}", f"input={tmp_path}", f"output_dir={tmp_path / 'o'}",
                                    "expect.class_names=[a,b]"]))


def test_bad_checkpoints_get_clear_errors(cls_run, tmp_path):
    result, _, _ = cls_run
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(open(result["last_checkpoint"], "rb").read()[:5000])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a medeff checkpoint"):
        load_checkpoint(foreign)
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"medeff": {"format": "medeff-checkpoint"}, "obj": _Custom()}, unsafe)
    with pytest.raises(CheckpointError, match="not loaded"):
        load_checkpoint(unsafe)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


class _Custom:
    pass


def test_predict_from_a_dataset_index(cls_run, nodule_index, tmp_path):
    from medeff.data.datamodule import load_dataset_index

    result, _, _ = cls_run
    res = predict({"ckpt": result["last_checkpoint"], "input": str(nodule_index), "output_dir": str(tmp_path),
                   "device": "cpu", "batch_size": 64})
    index = load_dataset_index(nodule_index)
    assert [r["case_id"] for r in res["cases"]] == index.case_ids
    assert [r["n_items"] for r in res["cases"]] == [len(c.archive.rows) for c in index.all_cases]


def test_3d_crop_classification_trains_and_predicts(crop_index, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="medeff.engine.norm_check"):
        run = train(compose("train", ["experiment=nodule_3d", f"data.index={crop_index}",
                                      "data.patch_size=[32,32,32]", "data.batch_size=2"]
                            + fast_overrides(tmp_path / "run")))
    # 32^3 with a batch of 2: the deepest batch norms see 2 values per channel (callbacks.batch_norm_check)
    assert any("values per channel (fewest: 2" in r.getMessage() for r in caplog.records)
    meta = torch.load(run["last_checkpoint"], map_location="cpu", weights_only=True)["medeff"]
    assert meta["data"]["kind"] == "volume" and meta["data"]["patch_size"] == [32, 32, 32]
    res = predict({"ckpt": run["last_checkpoint"], "input": str(crop_index.parent), "output_dir": str(tmp_path / "o"),
                   "device": "cpu", "case_ids": {"naming": "input"}})
    assert [r["case_id"] for r in res["cases"]] == ["n0", "n1", "n2", "n3"]
    assert all(r["n_items"] == 1 for r in res["cases"])
    from medeff.demo.phantom import make_nodule_archive
    from medeff.errors import InputError

    archive = make_nodule_archive(tmp_path / "arch", n_exams=1) / "nodule_slices_64x64.npz"
    with pytest.raises(InputError, match="classifies volumes"):
        predict({"ckpt": run["last_checkpoint"], "input": str(archive), "output_dir": str(tmp_path / "o2")})


def test_predict_does_not_load_the_pretrained_weights_again(nodule_index, tmp_path, monkeypatch):
    """A model fine-tuned from a weights file predicts from its checkpoint alone: the file may be gone, and the hub
    is never asked (offline), because the checkpoint holds the trained weights and their convention."""
    from medeff.demo.phantom import make_nodule_archive
    from medeff.models import create_model

    weights = tmp_path / "start.pt"
    net = create_model("efficientnet_b0", spatial_dims=2, in_channels=3, num_classes=2, width=0.25, depth=0.34)
    torch.save(net.state_dict(), weights)
    run_dir = tmp_path / "run"
    overrides = ["experiment=nodule_2p5d", f"data.index={nodule_index}", "data.batch_size=8",
                 "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", f"model.weights={weights}"]
    result = train(compose("train", overrides + fast_overrides(run_dir)))
    meta = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)["medeff"]
    assert meta["config"]["model"]["weights"] == str(weights)  # recorded as what the run started from
    weights.unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    archive = make_nodule_archive(tmp_path / "new", n_exams=2, seed=3) / "nodule_slices_64x64.npz"
    res = predict(compose("predict", [f"ckpt={result['last_checkpoint']}", f"input={archive}",
                                      f"output_dir={tmp_path / 'pred'}", "device=cpu"]))
    assert res["cases"] and not res["failed"]
