"""Bounded smoke run of pipelines/iq_othnccd.sh on a few IQ-OTH/NCCD slices per class (ImageNet Lite0 on 32x32 inputs,
one epoch): every output file exists with its columns, both protocols and both models are reported, test sets match
the splits, a NAME_imagenet model trains from its ImageNet weights."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "pipelines" / "iq_othnccd.sh"
FOLDERS = ["Normal cases", "Bengin cases", "Malignant cases"]
CLASSES = ["normal", "benign", "malignant"]
TINY = ["trainer.max_epochs=1", "data.patch_size=[32,32]", "data.batch_size=4"]
MODEL = "efficientnet_lite0_imagenet"  # model=efficientnet_lite0 model.pretrained=true (the installed weights)


@pytest.fixture(scope="module")
def run(shared_data, tmp_path_factory):
    src = shared_data / "iq_othnccd" / "The IQ-OTHNCCD lung cancer dataset"
    if not src.is_dir():
        pytest.skip(f"IQ-OTH/NCCD not found at {src}")
    tmp = tmp_path_factory.mktemp("iq")
    data = tmp / "IQ subset (6 per class)"  # spaces and parentheses in the path, as in the real set
    for folder in FOLDERS:
        (data / folder).mkdir(parents=True)
        for f in sorted((src / folder).iterdir())[:6]:
            shutil.copy(f, data / folder / f.name)
    env = dict(os.environ, FRACTIONS="fractions.train=0.5 fractions.val=0.25 fractions.test=0.25", N_RESAMPLES="50",
               OMP_NUM_THREADS="1", MODELS=MODEL)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    r = subprocess.run(["bash", str(SCRIPT), str(data), "out", *TINY], cwd=tmp, env=env, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp / "out", data


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_outputs_and_columns(run):
    out, data = run
    splits = _rows(out / "splits.csv")
    assert list(splits[0])[:3] == ["file", "protocol", "split"]
    assert {r["protocol"] for r in splits} == {"published", "patient_safe"}
    assert len(splits) == 2 * 18 and {r["split"] for r in splits} == {"train", "val", "test"}
    assert all((data / r["file"]).is_file() for r in splits)
    preds = _rows(out / "predictions.csv")
    assert list(preds[0]) == ["file", "protocol", "model", "label", "prob_normal", "prob_benign", "prob_malignant"]
    test = {(r["protocol"], r["file"]) for r in splits if r["split"] == "test"}
    for model in ("thumbnail_knn", MODEL):
        got = {(r["protocol"], r["file"]) for r in preds if r["model"] == model}
        assert got == test, model  # one row per test image per model
    for r in preds:
        assert abs(sum(float(r[f"prob_{c}"]) for c in CLASSES) - 1.0) < 1e-4
    res = json.loads((out / "results.json").read_text())
    assert res["class_names"] == CLASSES and res["published"]["accuracy"] == 0.991
    assert res["grouping"]["n_cases"] == 18 and sum(int(k) * v for k, v in res["grouping"]["size_counts"].items()) == 18
    for p in ("published", "patient_safe"):
        part = res["protocols"][p]
        assert set(part["models"]) == {"thumbnail_knn", MODEL}
        m = part["models"][MODEL]["metrics"]
        for key in ("accuracy", "balanced_accuracy", "macro_auc", "sensitivity_benign", "specificity_malignant"):
            assert set(m[key]) >= {"value", "ci_low", "ci_high"}
        assert part["paired"][MODEL]["versus"] == "thumbnail_knn"
        assert part["leakage"]["leakage"]["n_test"] == sum(1 for q, _ in test if q == p)
    assert res["protocols"]["patient_safe"]["leakage"]["leakage"]["n_leaked"] == 0
    html = (out / "report.html").read_text()
    assert "patient_safe" in html and "99.1%" in html and "Confusion matrix" in html and "Near-duplicate groups" in html
    assert "Paired DeLong tests" in html and res["protocols"]["patient_safe"]["delong"]["n"] == len(
        [q for q, _ in test if q == "patient_safe"])
    timings = (out / "timings.txt").read_text()
    for step in ("index", "split_published", "knn_patient_safe", f"train_published_{MODEL}", "report"):
        assert step in timings


def test_imagenet_label_trains_from_the_imagenet_weights(run):
    out, _ = run
    from omegaconf import OmegaConf

    for p in ("published", "patient_safe"):
        cfg = OmegaConf.load(out / "work" / f"run_{p}_{MODEL}" / "config.yaml")
        assert cfg.model.name == "efficientnet_lite0" and cfg.model.pretrained is True


def test_index_groups_and_grouped_split_repeat_across_builds(run, tmp_path):
    """The pipeline's index settings (fixed pseudonym salt) give the same group ids, hence the same grouped split,
    on every build: with the random default salt the ids, and the split, changed from one build to the next."""
    _, data = run
    conf = ROOT / "pipelines" / "iq_othnccd.conf"
    script = (f'ROOT="{ROOT}"; source "{conf}"; read -r -a NEAR <<< "$NEAR_DUPLICATE"; '
              'medeff index "$1" "$2/index.json" groups.near_duplicates=true "${NEAR[@]}" "class_names=$CLASSES" '
              '"folders.class_map=$CLASS_MAP" "pseudonym.salt=$GROUP_SALT" && '
              'medeff split "$2/index.json" "$2/split" protocol=grouped seed=0 '
              'fractions.train=0.5 fractions.val=0.25 fractions.test=0.25')
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    got = []
    for k in range(2):
        r = subprocess.run(["bash", "-c", script, "x", str(data), str(tmp_path / f"b{k}")], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        rows = _rows(tmp_path / f"b{k}" / "split" / "splits.csv")
        got.append([(row["file"], row["group"], row["split"]) for row in rows])
    assert got[0] == got[1] and len(got[0]) == 18
