"""medeff predict applies the post-processing plan stored beside the model; medeff postprocess writes it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medeff.cli.main import main
from medeff.engine.predict import predict
from medeff.engine.predict_postprocess import plan_path
from medeff.errors import InputError
from medeff.evaluation.postprocess import PLAN_FILE, choose_postprocessing, write_plan

from . import predict_fakes as F


def _blobs():
    """A large block (the structure) and a small block far from it (a spurious island the network also sees)."""
    a = np.zeros((40, 40, 12), np.float32)
    a[5:25, 5:25, 2:10] = 1.0
    a[32:37, 32:37, 4:8] = 1.0
    return a


def _components(mask):
    return ndimage.label(mask == 1, structure=np.ones((3, 3, 3)))[1]


def _run(ckpt, src, out, **extra):
    return predict({"ckpt": str(ckpt), "input": str(src), "output_dir": str(out), "device": "cpu",
                    "case_ids": {"naming": "input"}, "num_workers": 0, **extra})


def test_predict_applies_the_plan_beside_the_checkpoint(monkeypatch, tmp_path):
    src = F.write_volume(tmp_path / "blobs.nii.gz", _blobs())
    ckpt = F.install(monkeypatch, tmp_path)
    _run(ckpt, src, tmp_path / "raw")
    raw = np.asarray(nib.load(tmp_path / "raw" / "blobs_seg.nii.gz").dataobj)
    assert _components(raw) == 2
    ref = (_blobs() > 0.5).astype(np.uint8)
    ref[32:37, 32:37, 4:8] = 0  # the reference has the block only
    plan = choose_postprocessing([(raw, ref)], label_names=["background", "plate"])
    assert plan["labels"][0]["steps"] == ["keep_largest_component"]
    write_plan(plan, plan_path(ckpt))
    assert plan_path(ckpt) == ckpt.parent / PLAN_FILE

    _run(ckpt, src, tmp_path / "post")
    post = np.asarray(nib.load(tmp_path / "post" / "blobs_seg.nii.gz").dataobj)
    assert _components(post) == 1
    lab, _ = ndimage.label(raw == 1, structure=np.ones((3, 3, 3)))
    island = (lab > 0) & (lab != np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    assert island.sum() > 0
    np.testing.assert_array_equal(post, np.where(island, 0, raw))  # exactly the island removed
    doc = json.loads((tmp_path / "post" / "predictions.json").read_text())
    assert doc["postprocessing"]["labels"][0]["steps"] == ["keep_largest_component"]
    assert doc["postprocessing"]["labels"][0]["dice_after"] > doc["postprocessing"]["labels"][0]["dice_before"]
    assert doc["cases"][0]["postprocessing_voxels_changed"]["plate:keep_largest_component"] > 0

    _run(ckpt, src, tmp_path / "off", postprocess={"enabled": False})
    off = np.asarray(nib.load(tmp_path / "off" / "blobs_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(off, raw)
    assert json.loads((tmp_path / "off" / "predictions.json").read_text())["postprocessing"] is None


def test_a_plan_for_other_labels_is_refused_before_inference(monkeypatch, tmp_path):
    src = F.write_volume(tmp_path / "blobs.nii.gz", _blobs())
    ckpt = F.install(monkeypatch, tmp_path)
    ref = (_blobs() > 0.5).astype(np.uint8)
    write_plan(choose_postprocessing([(ref, ref)], label_names=["background", "liver"]), plan_path(ckpt))
    with pytest.raises(InputError, match="chosen for labels"):
        _run(ckpt, src, tmp_path / "out")
    assert not (tmp_path / "out" / "blobs_seg.nii.gz").exists()


def test_postprocess_command_writes_a_plan_predict_uses(monkeypatch, tmp_path, capsys):
    src = F.write_volume(tmp_path / "blobs.nii.gz", _blobs())
    ckpt = F.install(monkeypatch, tmp_path)
    _run(ckpt, src, tmp_path / "val")
    refs = tmp_path / "refs"
    refs.mkdir()
    ref = (_blobs() > 0.5).astype(np.uint8)
    ref[32:37, 32:37, 4:8] = 0
    nib.save(nib.Nifti1Image(ref, nib.load(src).affine), refs / "blobs_seg.nii.gz")
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "blobs_seg.nii.gz").write_bytes((tmp_path / "val" / "blobs_seg.nii.gz").read_bytes())
    plan_file = tmp_path / "plans" / "pp.json"
    assert main(["postprocess", f"output={plan_file}", "label_names=[background,plate]",
                 f"prediction_dir={preds}", f"reference_dir={refs}"]) == 0
    assert "plate: keep_largest_component" in capsys.readouterr().out
    assert json.loads(plan_file.read_text())["labels"][0]["steps"] == ["keep_largest_component"]
    assert main(["postprocess", f"output={plan_file}", "label_names=[background,plate]",
                 f"prediction_dir={preds}", f"reference_dir={refs}"]) == 2  # exists, no overwrite
    _run(ckpt, src, tmp_path / "out", postprocess={"plan": str(plan_file)})
    assert _components(np.asarray(nib.load(tmp_path / "out" / "blobs_seg.nii.gz").dataobj)) == 1


def test_plan_location_of_folders_and_lists(tmp_path):
    run = tmp_path / "run"
    files = [run / f"fold{k}" / "checkpoints" / "last.ckpt" for k in range(2)]
    for f in files:
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
    assert plan_path(run) == run / PLAN_FILE
    assert plan_path([str(f) for f in files]) == run.resolve() / PLAN_FILE
    assert plan_path(str(files[0])) == files[0].parent / PLAN_FILE


def test_postprocess_writes_beside_the_fold_ensemble(monkeypatch, tmp_path):
    import medeff.engine.predict_postprocess as PP
    from medeff.engine.predict_postprocess import choose_from_config

    run = tmp_path / "run"
    (run / "fold0" / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(PP, "_label_names", lambda ckpt: ["background", "plate"])
    preds, refs = tmp_path / "p", tmp_path / "r"
    preds.mkdir()
    refs.mkdir()
    ref = (_blobs() > 0.5).astype(np.uint8)
    nib.save(nib.Nifti1Image(ref, np.eye(4)), preds / "a.nii.gz")
    ref[32:37, 32:37, 4:8] = 0
    nib.save(nib.Nifti1Image(ref, np.eye(4)), refs / "a.nii.gz")
    plan = choose_from_config({"ckpt": str(run), "prediction_dir": str(preds), "reference_dir": str(refs),
                               "candidates": ["keep_largest_component", "fill_holes"]})
    assert plan["path"] == str(run / PLAN_FILE)
    stored = json.loads((run / PLAN_FILE).read_text())
    assert stored["label_names"] == ["background", "plate"] and stored["labels"][0]["steps"] == [
        "keep_largest_component"]


def test_segmentation_report_lists_the_post_processing(monkeypatch, tmp_path):
    from medeff.evaluation import evaluate_segmentation
    from medeff.evaluation.sections import build_sections

    src = F.write_volume(tmp_path / "blobs.nii.gz", _blobs())
    ckpt = F.install(monkeypatch, tmp_path)
    refs = tmp_path / "refs"
    refs.mkdir()
    ref = (_blobs() > 0.5).astype(np.uint8)
    ref[32:37, 32:37, 4:8] = 0
    nib.save(nib.Nifti1Image(ref, nib.load(src).affine), refs / "blobs_seg.nii.gz")
    _run(ckpt, src, tmp_path / "raw")
    raw = np.asarray(nib.load(tmp_path / "raw" / "blobs_seg.nii.gz").dataobj)
    write_plan(choose_postprocessing([(raw, ref)], label_names=["background", "plate"]), plan_path(ckpt))
    _run(ckpt, src, tmp_path / "post")
    res = evaluate_segmentation(prediction_dir=tmp_path / "post", reference_dir=refs, n_resamples=20)
    pp = res["postprocessing"]
    assert pp["source"] == "predictions.json" and pp["n_validation_cases"] == 1
    assert pp["labels"][0]["steps"] == ["keep_largest_component"]
    section = next(s for s in build_sections(res) if s["title"] == "Post-processing")
    row = section["tables"][0]["rows"][0]
    assert row[:2] == ["plate", "keep_largest_component"] and float(row[3]) > float(row[2])
    # masks written without a plan: the report says so
    res = evaluate_segmentation(prediction_dir=tmp_path / "raw", reference_dir=refs, n_resamples=20)
    assert res["postprocessing"] == {"source": "predictions.json", "n_validation_cases": None, "labels": []}
    section = next(s for s in build_sections(res) if s["title"] == "Post-processing")
    assert "without post-processing" in section["paragraphs"][0]
    # the plan itself, given explicitly
    res = evaluate_segmentation(prediction_dir=tmp_path / "raw", reference_dir=refs, n_resamples=20,
                                postprocessing=plan_path(ckpt))
    assert res["postprocessing"]["labels"][0]["dice_after"] > res["postprocessing"]["labels"][0]["dice_before"]
