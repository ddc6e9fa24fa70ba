"""The label subset of the organ workflow is configuration: ``label_remap`` in the index (validation, fingerprints,
training transforms), fixed folds from a manifest column, and the evaluation's ``reference_remap`` /
``reorient_reference`` (a LAS reference on an LPS DICOM grid)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medeff.data import build_index, index_config, load_index
from medeff.data.label_remap import parse_label_remap, remap_labels
from medeff.errors import ConfigError, IndexValidationError, InputError

REMAP = "label_remap={1: 1, 5: 2, 52: 3}"


def test_remap_keeps_listed_values_and_clears_the_rest():
    arr = np.array([[0, 1, 2], [5, 52, 7]], np.uint8)
    np.testing.assert_array_equal(remap_labels(arr, {1: 1, 5: 2, 52: 3}), [[0, 1, 0], [2, 3, 0]])
    assert remap_labels(arr, {}) is arr
    with pytest.raises(ConfigError, match="label_remap must map"):
        parse_label_remap({"liver": 5})


def test_remap_transform_keeps_the_affine():
    import torch
    from monai.data import MetaTensor

    from medeff.data.transforms import RemapLabelsd

    aff = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    lab = MetaTensor(torch.tensor([[[[0, 5], [52, 9]]]]), affine=aff)
    out = RemapLabelsd(["label"], [[5, 2], [52, 3]])({"label": lab})["label"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, aff)
    assert out.flatten().tolist() == [0, 2, 3, 0]


def _pair(folder, name, values, seed):
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 50, (16, 14, 10)).astype(np.int16)
    lab = np.zeros((16, 14, 10), np.uint8)
    for i, v in enumerate(values):
        lab[2 + 3 * i:4 + 3 * i, 3:9, 2:8] = v
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), folder / f"{name}_ct.nii.gz")
    nib.save(nib.Nifti1Image(lab, aff), folder / f"{name}_seg.nii.gz")


@pytest.fixture()
def source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _pair(src, "a", [1, 5, 52, 7], 0)
    _pair(src, "b", [1, 5, 9], 1)
    (tmp_path / "names.json").write_text(json.dumps({"total": {"1": "spleen", "5": "liver", "7": "pancreas",
                                                               "9": "x", "52": "aorta"}}))
    return src


def test_index_applies_the_remap_everywhere(source, tmp_path):
    cfg = index_config(["nifti.rule=suffix", REMAP, f"labels_file={tmp_path / 'names.json'}", "labels_file_key=total",
                        "folds.k=2"])
    index = build_index(source, tmp_path / "index.json", cfg)
    assert index.labels == {"background": 0, "spleen": 1, "liver": 2, "aorta": 3}
    stored = json.loads((tmp_path / "index.json").read_text())
    assert stored["label_remap"] == {"1": 1, "5": 2, "52": 3}
    voxels = [c.fingerprint["label_voxels"] for c in index.all_cases]
    assert sorted(voxels[0]) == ["1", "2", "3"] and sorted(voxels[1]) == ["1", "2"]  # 7 and 9 became background
    again = load_index(tmp_path / "index.json", check_voxels=True)
    assert again.label_remap == {1: 1, 5: 2, 52: 3}

    from medeff.data.datamodule import MedeffDataModule

    dm = MedeffDataModule(str(tmp_path / "index.json"), task="segmentation", num_classes=4, fold=0,
                          preprocessing={"orientation": "RAS", "spacing": None})
    dm.setup()
    labels = set()
    for item in list(dm.train_ds) + list(dm.val_ds):
        labels |= set(np.unique(np.asarray(item["label"])).tolist())
    assert labels == {0, 1, 2, 3}
    assert dm.describe()["preprocessing"]["label_remap"] == [[1, 1], [5, 2], [52, 3]]


def test_without_the_remap_the_extra_labels_are_refused(source, tmp_path):
    cfg = index_config(["nifti.rule=suffix", "+labels.spleen=1", "folds.k=2"])
    with pytest.raises(IndexValidationError, match="label values"):
        build_index(source, tmp_path / "index.json", cfg)


def test_fixed_folds_from_a_manifest_column(source, tmp_path):
    rows = ["image,label,patient_id,fold", "a_ct.nii.gz,a_seg.nii.gz,p1,1", "b_ct.nii.gz,b_seg.nii.gz,p2,0"]
    (source / "m.csv").write_text("\n".join(rows) + "\n")
    index = build_index(source / "m.csv", tmp_path / "i.json", index_config(["csv.fold_col=fold", REMAP, "folds.k=2"]))
    assert [(c.image[0], c.fold) for c in index.all_cases] == [("a_ct.nii.gz", 1), ("b_ct.nii.gz", 0)]
    (source / "m.csv").write_text("\n".join(rows + ["b_ct.nii.gz,b_seg.nii.gz,p1,0"]) + "\n")
    with pytest.raises(IndexValidationError, match="split across the fixed folds"):
        build_index(source / "m.csv", tmp_path / "j.json", index_config(["csv.fold_col=fold", REMAP, "folds.k=2"]))


def test_evaluation_remaps_and_reorients_the_real_reference(shared_data, tmp_path):
    import nibabel.orientations as nio

    from medeff.evaluation import evaluate_segmentation
    from medeff.io import read_image

    data = shared_data / "ct_organs_totalsegmentator"
    series = read_image(data / "example_ct_dicom")
    ref = nib.load(str(data / "example_seg_dicom.nii.gz"))
    assert nib.aff2axcodes(ref.affine) == ("L", "A", "S")  # stored in another order than the LPS series grid
    ornt = nio.ornt_transform(nio.io_orientation(ref.affine), nio.io_orientation(series.affine_ras))
    on_grid = nio.apply_orientation(np.asarray(ref.dataobj), ornt)
    remap = {1: 1, 5: 2, 52: 3}
    pred = remap_labels(on_grid, remap).astype(np.uint8)
    pred[pred == 3] = 0  # drop the aorta from the prediction: its Dice must be 0, the others 1
    nib.save(nib.Nifti1Image(pred, series.affine_ras), tmp_path / "pred.nii.gz")
    cases = tmp_path / "cases.csv"
    ref_path = data / "example_seg_dicom.nii.gz"
    cases.write_text(f"case_id,prediction,reference\ns,{tmp_path / 'pred.nii.gz'},{ref_path}\n")
    names = {1: "spleen", 2: "liver", 3: "aorta"}
    res = evaluate_segmentation(cases, labels=names, reference_remap=remap, reorient_reference=True, n_resamples=20)
    dice = {a["name"]: next(m["value"] for m in a["metrics"] if m["key"] == "dice") for a in res["aggregates"]}
    assert dice == {"spleen": 1.0, "liver": 1.0, "aorta": 0.0}
    with pytest.raises(InputError, match="reorient_reference=true"):
        evaluate_segmentation(cases, labels=names, reference_remap=remap, n_resamples=20)
