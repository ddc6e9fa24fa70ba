"""Graded training targets (data.soft_label): the mapping, its refusals, the data module and the loss."""

import csv

import pytest
import torch
import torch.nn.functional as F

from medeff.data.soft_labels import attach_soft_labels, check_soft_label_spec
from medeff.engine.losses import ClassificationLoss
from medeff.errors import ConfigError, IndexValidationError

RATING = {"column": "malignancy_rating", "map": {1: 0.0, 2: 0.25, 4: 0.75, 5: 1.0}}


def _recs(*pairs):
    return [{"case_id": f"c{i}", "label": lab, "meta_malignancy_rating": r} for i, (lab, r) in enumerate(pairs)]


def test_ratings_become_target_probabilities():
    spec = check_soft_label_spec(RATING, 2, "classification")
    recs = _recs((0, 1), (0, 2), (1, 4), (1, "5.0"))  # a CSV value read as text maps like the number
    attach_soft_labels(recs, spec, index_path="idx.json")
    assert [r["soft_label"] for r in recs] == [0.0, 0.25, 0.75, 1.0]


@pytest.mark.parametrize("spec, num_classes, task, match", [
    ({"map": {1: 0.0}}, 2, "classification", "no column"),
    ({"column": "r", "map": {}}, 2, "classification", "map is empty"),
    ({"column": "r", "map": {1: 1.5}}, 2, "classification", r"\[0, 1\]"),
    (RATING, 3, "classification", "binary"),
    (RATING, 2, "segmentation", "binary"),
])
def test_bad_settings_are_refused(spec, num_classes, task, match):
    with pytest.raises(ConfigError, match=match):
        check_soft_label_spec(spec, num_classes, task)


@pytest.mark.parametrize("recs, match", [
    (_recs((0, 1), (1, None)), "lack"),
    (_recs((0, 1), (1, 3)), r"no probability for malignancy_rating value\(s\) \['3'\]"),
    (_recs((0, 4), (1, 5)), "contradicts the label"),
])
def test_bad_cases_are_refused_naming_the_index(recs, match):
    with pytest.raises(IndexValidationError, match=match) as err:
        attach_soft_labels(recs, check_soft_label_spec(RATING, 2, "classification"), index_path="/x/index.json")
    assert "/x/index.json" in str(err.value)


def test_soft_loss_matches_hard_loss_at_0_and_1_and_grades_between():
    torch.manual_seed(0)
    logits = torch.randn(6, 2)
    hard = torch.tensor([0, 1, 0, 1, 1, 0])
    settings = ({}, {"class_weights": [1.0, 2.0]}, {"label_smoothing": 0.1},
                {"class_weights": [0.5, 3.0], "label_smoothing": 0.2})
    for kw in settings:
        loss = ClassificationLoss("ce", num_classes=2, **kw)
        assert torch.allclose(loss(logits, hard, soft=hard.float()), loss(logits, hard))
    ce = ClassificationLoss("ce", num_classes=2)
    p = torch.tensor([0.25, 0.75, 0.0, 1.0, 0.75, 0.25])
    want = -(torch.stack([1 - p, p], 1) * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(ce(logits, hard, soft=p), want)
    assert not torch.allclose(ce(logits, hard, soft=p), ce(logits, hard))
    one = ClassificationLoss("bce", num_classes=1)
    assert torch.allclose(one(logits[:, 1:], hard, soft=p), F.binary_cross_entropy_with_logits(logits[:, 1], p))
    two = ClassificationLoss("bce", num_classes=2)
    assert torch.allclose(two(logits, hard, soft=hard.float()), two(logits, hard))
    assert torch.allclose(two(logits, hard, soft=p),
                          F.binary_cross_entropy_with_logits(logits, torch.stack([1 - p, p], 1)))
    with pytest.raises(ConfigError, match="focal"):
        ClassificationLoss("focal", num_classes=2)(logits, hard, soft=p)


def _rated_archive(root):
    """The phantom nodule archive with a malignancy rating per nodule (1/2 benign, 4/5 malignant) in index.csv."""
    from medeff.data.index_build import build_index
    from medeff.demo.phantom import make_nodule_archive

    make_nodule_archive(root, n_exams=6, malignant_fraction=0.4, seed=1)
    with open(root / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r.pop("diameter_mm")  # varies by slice: not a case-level column
        r["malignancy_rating"] = (4 if int(r["nodule_id"]) % 2 else 5) if r["label"] == "1" else (
            1 if int(r["nodule_id"]) % 2 else 2)
    with open(root / "index.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    build_index(root, root / "index.json", overrides=["folds.k=2", "class_names=[benign,malignant]"])
    return root / "index.json"


def test_data_module_gives_training_items_their_grade(tmp_path):
    from medeff.data.datamodule import MedeffDataModule

    index = _rated_archive(tmp_path)
    dm = MedeffDataModule(str(index), kind="archive", task="classification", spatial_dims=2, in_channels=1,
                          batch_size=4, preprocessing={"intensity": {"mode": "window", "window": [0, 255]}},
                          soft_label=RATING)
    dm.setup("fit")
    grades = {(int(it["label"]), float(it["soft_label"])) for it in dm.train_ds.data}
    assert grades <= {(0, 0.0), (0, 0.25), (1, 0.75), (1, 1.0)} and {g for _, g in grades} > {0.0, 1.0}
    assert all("soft_label" not in it for it in dm.val_ds.data)  # validation keeps the hard labels
    batch = next(iter(dm.train_dataloader()))
    assert batch["soft_label"].shape == batch["label"].shape
    assert torch.equal(batch["soft_label"] > 0.5, batch["label"] > 0)
    with pytest.raises(IndexValidationError, match="no probability"):
        MedeffDataModule(str(index), kind="archive", task="classification", spatial_dims=2, in_channels=1,
                         preprocessing={"intensity": {"mode": "window", "window": [0, 255]}},
                         soft_label={"column": "malignancy_rating", "map": {1: 0.0, 5: 1.0}}).setup("fit")
