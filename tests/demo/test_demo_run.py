"""The demo end to end, shrunk to seconds: every stage runs, outputs are consistent, no identifier leaks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medeff.cli.main import main
from medeff.demo.phantom import ORGAN_LABELS
from medeff.errors import ConfigError
from medeff.io import read_image

def _list(items: list[str]) -> str:
    return "[" + ",".join(f"'{i}'" for i in items) + "]"


TINY = [
    "data.nodule_train_exams=16", "data.nodule_test_exams=6", "data.ct_train_cases=3", "data.ct_test_cases=2",
    "data.ct_shape=[40,36,20]", "classifier.epochs=1", "segmenter.epochs=1",
    "classifier.overrides=" + _list(["+model.width=0.25", "+model.depth=0.34", "++trainer.limit_train_batches=2",
                                     "++trainer.limit_val_batches=2", "trainer.enable_progress_bar=false"]),
    "segmenter.overrides=" + _list(["+model.width=0.25", "+model.depth=0.34", "data.patch_size=[32,32,16]",
                                    "data.preprocessing.spacing=[5.0,5.0,6.0]", "++trainer.limit_train_batches=1",
                                    "++trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=1",
                                    "trainer.enable_progress_bar=false"]),
    "report.formats=[html,json,csv]",
]
# identifying values the demo's synthetic DICOM series carries (medeff.demo.dicom_writer defaults)
IDENTITY = ["PHANTOM^DEMO", "PHANTOM-0001", "PHANTOM-0002", "19000101", "ACC0000", "medeff phantom lab"]


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    cls_html = out / "report" / "classification" / "report.html"
    seg_html = out / "report" / "segmentation" / "report.html"
    assert str(cls_html) in printed and str(seg_html) in printed
    assert cls_html.stat().st_size > 10_000 and seg_html.stat().st_size > 10_000

    # one prediction per held-out nodule, probabilities in [0, 1]
    z = np.load(out / "data" / "nodules_test" / "nodule_slices_64x64.npz")
    with open(out / "predictions" / "nodules" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["case_id"] for r in rows) == sorted(set(z["nodule_key"].tolist()))
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)

    # the mask predicted from each held-out DICOM series lies on that series' grid
    for case in ("test00", "test01"):
        series = read_image(out / "data" / "ct_test_dicom" / case)
        mask = read_image(next((out / "predictions" / "ct" / case).glob("*.nii.gz")))
        assert mask.shape == series.shape
        assert np.allclose(mask.affine_ras, series.affine_ras, atol=1e-4)

    # the CT index names the organs
    index = json.loads((out / "index" / "ct_train.json").read_text())
    assert index["labels"] == ORGAN_LABELS

    # the segmentation report covers every organ of the phantom, each scored on every held-out case (n > 1: a CI)
    seg = json.loads((out / "report" / "segmentation" / "summary.json").read_text())
    assert seg["counts"]["cases"] == 2
    organs = {a["name"]: a for a in seg["aggregates"]}
    assert set(organs) == {name for name, value in ORGAN_LABELS.items() if value}
    for name, agg in organs.items():
        dice = next(m for m in agg["metrics"] if m["key"] == "dice")
        assert dice["n"] == 2, name
        assert dice["ci_low"] is not None and dice["ci_high"] is not None, name

    # the reports record what produced them: the demo settings and the resolved training config
    results = json.loads((out / "report" / "classification" / "summary.json").read_text())
    config = results["provenance"]["config"]
    assert config["demo"]["classifier"]["epochs"] == 1
    assert config["training"]["data"]["name"] == "nodule_2d"

    # nothing outside the input data folder carries the series' identifying values
    for path in out.rglob("*"):
        if path.is_file() and "data" not in path.relative_to(out).parts[:1]:
            blob = path.read_bytes()
            for value in IDENTITY:
                assert value.encode() not in blob, f"{value!r} leaked into {path}"


def test_demo_refuses_a_single_held_out_ct_case(tmp_path):
    with pytest.raises(ConfigError, match="ct_test_cases"):
        from medeff.demo.run import run_demo

        run_demo(tmp_path / "demo", [*TINY, "data.ct_test_cases=1"])
    assert not (tmp_path / "demo" / "data").exists()


def test_demo_segmentation_evaluation_scores_every_organ_on_every_held_out_case(tmp_path):
    """Fast check of the evaluation step alone: phantom test cases as the demo writes them, the reference masks as
    predictions; every organ is reported with one value per case (n = 3) and a CI, and the report has overlays."""
    from omegaconf import OmegaConf

    from medeff.demo.run import _make_ct_data, evaluate_demo_segmentation

    cfg = OmegaConf.create({"seed": 0, "data": {"ct_train_cases": 1, "ct_test_cases": 3, "ct_shape": [40, 36, 20],
                                                "ct_spacing": [5.0, 5.0, 6.0]}})
    data = _make_ct_data(tmp_path, cfg)
    index = tmp_path / "pairs.csv"
    lines = ["case_id,prediction,reference,image"]
    lines += [f"{c['case']},{c['reference']},{c['reference']},{c['dicom']}" for c in data["ct_test"]]
    index.write_text("\n".join(lines) + "\n")
    res = evaluate_demo_segmentation(index, seed=0)
    assert res["counts"]["cases"] == 3
    organs = {a["name"]: next(m for m in a["metrics"] if m["key"] == "dice") for a in res["aggregates"]}
    assert set(organs) == {name for name, value in ORGAN_LABELS.items() if value}
    for name, dice in organs.items():
        assert dice["n"] == 3 and dice["value"] == pytest.approx(1.0), name
        assert dice["ci_low"] is not None, name
    assert res["overlays"]
