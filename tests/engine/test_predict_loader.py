"""medeff predict reads the next case in a worker while the current one is predicted; outputs do not change."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medeff.engine.predict import predict
from medeff.engine.predict_loader import resolve_predict_workers
from medeff.errors import ConfigError

from . import predict_fakes as F


def test_a_worker_reading_ahead_gives_the_same_outputs(monkeypatch, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    plate = F.thin_plate()
    F.write_volume(inputs / "a.nii.gz", plate)
    F.write_volume(inputs / "b.nii.gz", plate[::-1].copy())
    (inputs / "c.nii.gz").write_bytes(b"not a nifti")  # fails on its own, in the worker
    ckpt = F.install(monkeypatch, tmp_path)
    runs = {}
    for n in (0, 1):
        out = tmp_path / f"w{n}"
        res = predict({"ckpt": str(ckpt), "input": str(inputs), "output_dir": str(out), "device": "cpu",
                       "case_ids": {"naming": "input"}, "num_workers": n, "probability_maps": True})
        runs[n] = (out, res)
    (out0, res0), (out1, res1) = runs[0], runs[1]
    assert [f["case_id"] for f in res1["failed"]] == ["c"] and res1["failed"] == res0["failed"]
    for name in ("a_seg.nii.gz", "b_seg.nii.gz", "a_prob_1_plate.nii.gz"):
        i0, i1 = nib.load(out0 / name), nib.load(out1 / name)
        np.testing.assert_array_equal(np.asarray(i0.dataobj), np.asarray(i1.dataobj))
        np.testing.assert_array_equal(i0.affine, i1.affine)
    assert np.asarray(nib.load(out0 / "a_seg.nii.gz").dataobj).any()
    doc0, doc1 = (json.loads((o / "predictions.json").read_text()) for o in (out0, out1))
    def strip(doc):  # the mask paths name the two output folders
        return [{k: v for k, v in c.items() if k != "mask"} for c in doc["cases"]]

    assert strip(doc0) == strip(doc1) and [c["case_id"] for c in doc0["cases"]] == ["a", "b"]


def test_num_workers_values():
    assert resolve_predict_workers(0) == 0 and resolve_predict_workers("3") == 3
    assert 0 <= resolve_predict_workers("auto") <= 2
    for bad in (-1, "many", 1.5):
        with pytest.raises(ConfigError, match="num_workers"):
            resolve_predict_workers(bad)


class _MeanNet:
    """A 'classifier' whose malignant logit is the mean windowed intensity of the crop."""

    def __call__(self, x):
        import torch

        m = x.mean(dim=tuple(range(1, x.ndim)))
        return torch.stack([-m, m], dim=1) * 10

    def eval(self):
        return self


def test_volume_classification_reads_ahead_with_the_same_rows(monkeypatch, tmp_path):
    import medeff.engine.predict as P

    meta = {"task": "classification", "label_names": [], "class_names": ["benign", "malignant"],
            "positive_classes": [1], "threshold": 0.5, "versions": {},
            "data": {"spatial_dims": 3, "kind": "volume", "patch_size": [8, 8, 4],
                     "preprocessing": {"intensity": {"mode": "window", "window": [0.0, 1.0]}, "normalize": None}},
            "config": {"task": {}}}
    ckpt = tmp_path / "c.ckpt"
    ckpt.write_bytes(b"placeholder")
    monkeypatch.setattr(P, "load_model", lambda path, **kw: (_MeanNet(), meta))
    inputs = tmp_path / "crops"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        F.write_volume(inputs / f"n{k}.nii.gz", rng.uniform(0, 0.3 * (k + 1), size=(8, 8, 4)))
    (inputs / "n9.nii.gz").write_bytes(b"broken")
    rows = {}
    for n in (0, 1):
        res = predict({"ckpt": str(ckpt), "input": str(inputs), "output_dir": str(tmp_path / f"w{n}"),
                       "device": "cpu", "case_ids": {"naming": "input"}, "num_workers": n})
        rows[n] = res
    assert rows[0]["cases"] == rows[1]["cases"] and [r["case_id"] for r in rows[1]["cases"]] == ["n0", "n1", "n2"]
    assert [f["case_id"] for f in rows[1]["failed"]] == ["n9"] and rows[0]["failed"] == rows[1]["failed"]
    scores = [r["score"] for r in rows[1]["cases"]]
    assert scores == sorted(scores) and scores[0] < scores[-1]  # brighter crops score higher: real inputs were read
