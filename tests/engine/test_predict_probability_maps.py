"""Optional probability maps beside the mask: one 16-bit scaled NIfTI per foreground class, on the input's grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from medeff.engine.predict import predict, probability_map_names

from . import predict_fakes as F


def _run(ckpt, src, out, **extra):
    return predict({"ckpt": str(ckpt), "input": str(src), "output_dir": str(out), "device": "cpu",
                    "case_ids": {"naming": "input"}, "num_workers": 0, **extra})


def test_probability_maps_are_16_bit_on_the_input_grid(monkeypatch, tmp_path):
    src = F.write_volume(tmp_path / "plate.nii.gz", F.thin_plate())
    ckpt = F.install(monkeypatch, tmp_path)
    res = _run(ckpt, src, tmp_path / "out", probability_maps=True)
    out = tmp_path / "out"
    prob_path = out / "plate_prob_1_plate.nii.gz"
    assert str(prob_path) in res["files"]
    # nothing else: no background map, no temporary files left by the atomic writes
    assert sorted(p.name for p in out.iterdir()) == ["plate_prob_1_plate.nii.gz", "plate_seg.nii.gz",
                                                     "predictions.json", "run_manifest.jsonl"]
    src_img, prob_img = nib.load(src), nib.load(prob_path)
    assert prob_img.get_data_dtype() == np.uint16  # 2 bytes a voxel, as float16 (which NIfTI-1 lacks)
    assert prob_img.shape == src_img.shape
    np.testing.assert_allclose(prob_img.affine, src_img.affine, atol=1e-5)
    assert int(prob_img.header["qform_code"]) == 1 and int(prob_img.header["sform_code"]) == 1
    p = prob_img.get_fdata()  # the header's scaling applied
    assert -1e-4 <= float(p.min()) and float(p.max()) <= 1.0 + 1e-4 and float(p.max()) > 0.9
    mask = np.asarray(nib.load(out / "plate_seg.nii.gz").dataobj)
    decided = np.abs(p - 0.5) > 1e-4  # away from the 16-bit rounding of a tie
    assert decided.mean() > 0.99
    np.testing.assert_array_equal((mask == 1)[decided], (p > 0.5)[decided])  # the mask is the map's argmax
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["probability_maps"] is True
    assert doc["cases"][0]["probability_maps"] == ["plate_prob_1_plate.nii.gz"]


def test_no_probability_maps_by_default_and_with_the_label_path(monkeypatch, tmp_path):
    src = F.write_volume(tmp_path / "plate.nii.gz", F.thin_plate())
    ckpt = F.install(monkeypatch, tmp_path)
    _run(ckpt, src, tmp_path / "default")
    assert not list((tmp_path / "default").glob("*_prob_*"))
    _run(ckpt, src, tmp_path / "labels", resample="labels", probability_maps=True)
    assert nib.load(tmp_path / "labels" / "plate_prob_1_plate.nii.gz").shape == nib.load(src).shape


def test_probability_map_names():
    assert probability_map_names("case_1", ["background", "Left kidney", "x/y", "é"]) == [
        "case_1_prob_1_Left-kidney.nii.gz", "case_1_prob_2_x-y.nii.gz", "case_1_prob_3_class.nii.gz"]
