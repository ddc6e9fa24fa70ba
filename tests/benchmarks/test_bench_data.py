"""``medeff bench data``: pipeline and model throughput per experiment, with MONAI's per-sample chain beside it.
Tiny runs (a few batches, one model step): they check what is measured and reported, not how fast it is."""

from __future__ import annotations

import json
import os

import pytest

from medeff.benchmarks.data_pipeline import format_data_report, run_data_bench

BASE = {"epochs": 2, "max_batches": 2, "model_steps": 1, "model_warmup": 0, "threads": 1, "num_workers": None,
        "peers": {"monai": True}, "overwrite": True}


@pytest.fixture(scope="module")
def phantom_indexes(tmp_path_factory):
    """A phantom nodule archive and three phantom organ CT volumes, each with its index (no shared data)."""
    import csv

    import nibabel as nib

    from medeff.data.index_build import build_index
    from medeff.demo.phantom import make_nodule_archive, make_phantom_ct

    root = tmp_path_factory.mktemp("bench_data")
    make_nodule_archive(root / "nodules", n_exams=10, malignant_fraction=0.45, seed=1)
    build_index(root / "nodules", root / "nodules.json", overrides=["folds.k=2", "class_names=[benign,malignant]"])
    organs = root / "organs"
    organs.mkdir()
    with open(organs / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "patient_id", "fold"])
        for seed, fold in zip(range(3), (0, 1, 1)):
            ct, lab = make_phantom_ct((36, 30, 14), (8.0, 8.0, 10.0), seed=seed)
            nib.save(nib.Nifti1Image(ct.array, ct.affine_ras), organs / f"ct{seed}.nii.gz")
            nib.save(nib.Nifti1Image(lab.array, lab.affine_ras), organs / f"ct{seed}_seg.nii.gz")
            w.writerow([f"ct{seed}.nii.gz", f"ct{seed}_seg.nii.gz", f"p{seed}", fold])
    build_index(organs / "manifest.csv", root / "organs.json", overrides=["folds.k=2", "csv.fold_col=fold"])
    return root


def test_phantom_cases_report_pipeline_model_and_monai(phantom_indexes, tmp_path):
    root = phantom_indexes
    cfg = {**BASE, "shared_data": str(tmp_path / "absent"), "work_dir": str(tmp_path / "work"),
           "output": str(tmp_path / "report.json"), "cases": ["slices", "organs", "missing"],
           "case_defs": {
               "slices": {"experiment": "lidc_nodule", "index": str(root / "nodules.json"), "goal": 3.0,
                          "overrides": ["data.batch_size=8", "data.batch_augmentation=true"]},
               "organs": {"experiment": "organ_seg_3d", "index": str(root / "organs.json"), "goal": 1.0,
                          "overrides": ["data.patch_size=[16,16,16]", "data.batch_size=1",
                                        "data.preprocessing.spacing=[10.0,12.0,12.0]",
                                        "augmentation.crop.num_samples=2", "+model.width=0.25", "+model.depth=0.25"]},
               "missing": {"experiment": "lidc_nodule", "source": {"folder": "lidc_nodule_slices_64"}}}}
    cfg["peers"] = {"monai": True, "batchgenerators": True, "batchgenerators_path": str(tmp_path / "nothing")}
    report = run_data_bench(cfg)
    slices, organs, missing = (report["cases"][k] for k in ("slices", "organs", "missing"))
    assert missing["status"] == "skipped" and "MEDEFF_SHARED_DATA" in missing["reason"]
    assert report["environment"]["wait_policy"] == {k: os.environ.get(k)  # what this process runs with
                                                    for k in ("MEDEFF_WAIT_POLICY", "OMP_WAIT_POLICY")}
    assert slices["status"] == organs["status"] == "ok"
    assert slices["batch_augmentation"] is True and organs["batch_augmentation"] is False
    for case, per_batch in ((slices, 8), (organs, 2)):  # organs: one case per batch, two patches per case
        for side in ("medeff", "monai"):
            passes = case[side]["epochs"]
            assert len(passes) == 2 and all(p["samples"] == 2 * per_batch for p in passes)
            assert case[side]["setup_s"] > 0 and case[side]["later_samples_per_s"] > 0
            assert case[side]["first_epoch_samples_per_s"] < case[side]["epoch_samples"] / case[side]["setup_s"]
            assert all(p["model"]["batch"] == per_batch for p in passes)  # model steps after every pass
        assert case["model"]["batch"] == per_batch
        later = case["medeff"]["epochs"][1]
        assert case["ratio"] == pytest.approx(later["samples_per_s"] / later["model"]["samples_per_s"])
        assert case["passed"] == (case["ratio"] >= case["goal"])
    for case in (slices, organs):  # nnU-Net's batchgenerators: measured when it imports, else a stated skip
        bg = case["batchgenerators"]
        assert bg.get("status") == "skipped" and "batchgenerators" in bg["reason"] or \
            [p["samples"] for p in bg["epochs"]] == [p["samples"] for p in case["medeff"]["epochs"]]
    assert slices["model"]["input_shape"] == [8, 3, 48, 48]  # the recipe's 2.5D stacks, centre-cropped
    assert organs["model"]["input_shape"] == [2, 1, 16, 16, 16]
    assert json.loads((tmp_path / "report.json").read_text())["cases"]["organs"]["status"] == "ok"
    table = format_data_report(report)
    assert "| slices | 0 | medeff (batch aug) |" in table and "| organs | 0 | monai |" in table
    assert "skipped" in table


def test_cli_runs_the_configured_lidc_case_on_real_slices(shared_data, tmp_path, capsys):
    """conf/bench_data.yaml's LIDC case through `medeff bench data`, on 8 exams of lidc_nodule_slices_64."""
    from medeff.cli.main import main
    from medeff.pipelines.lidc import split_by_exam

    data = tmp_path / "data"
    split_by_exam(shared_data / "lidc_nodule_slices_64", data / "lidc_nodule_slices_64", tmp_path / "rest",
                  test_fraction=0.0, max_exams=8, seed=0)
    out = tmp_path / "bench_data.json"
    rc = main(["bench", "data", "cases=[lidc_nodule_batch_aug]", "epochs=2", "max_batches=1", "model_steps=1",
               "model_warmup=0", "threads=1", f"shared_data={data}", f"work_dir={tmp_path / 'work'}",
               f"output={out}", "case_defs.lidc_nodule_batch_aug.overrides=['data.batch_augmentation=true',"
               "'data.batch_size=8']"])
    assert rc == 0
    case = json.loads(out.read_text())["cases"]["lidc_nodule_batch_aug"]
    assert case["status"] == "ok" and case["goal"] == 3.0
    assert case["model"]["input_shape"] == [8, 3, 48, 48]
    assert "| lidc_nodule_batch_aug |" in capsys.readouterr().out
