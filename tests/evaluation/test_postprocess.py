"""Post-processing chosen per label on validation cases: kept only where it raises the mean validation Dice."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medeff.errors import ConfigError, InputError
from medeff.evaluation.postprocess import (apply_plan, choose_postprocessing, fill_holes, keep_largest_component,
                                           load_plan, validation_pairs, write_plan)


def _ball(shape, centre, radius):
    g = np.indices(shape)
    return sum((g[i] - centre[i]) ** 2 for i in range(len(shape))) <= radius ** 2


def _case_with_island(seed: int):
    """Label 1: one sphere in the reference; the prediction adds a spurious island far from it.
    Label 2: two true spheres in the reference, both predicted (keep-largest would drop one)."""
    rng = np.random.default_rng(seed)
    shape = (40, 40, 20)
    ref = np.zeros(shape, np.uint8)
    c = (12 + rng.integers(0, 3), 12, 10)
    ref[_ball(shape, c, 6)] = 1
    ref[_ball(shape, (30, 30, 5), 3)] = 2
    ref[_ball(shape, (30, 30, 15), 4)] = 2
    pred = ref.copy()
    pred[_ball(shape, (32, 8, 10), 2)] = 1  # spurious island of label 1
    pred[_ball(shape, (30, 30, 15), 1)] = 0  # a hole inside one sphere of label 2, absent from the reference
    return pred, ref


def test_keep_largest_is_chosen_for_an_island_and_rejected_for_two_true_components():
    cases = [_case_with_island(s) for s in range(3)]
    plan = choose_postprocessing(iter(cases), label_names=["background", "liver", "kidney"])
    by = {e["value"]: e for e in plan["labels"]}
    assert by[1]["steps"] == ["keep_largest_component"]
    assert by[1]["dice_after"] > by[1]["dice_before"] + 0.01
    assert by[1]["candidates"]["keep_largest_component"]["chosen"] is True
    assert by[1]["name"] == "liver" and by[1]["n_cases"] == 3
    # label 2: two real components; keeping the largest would lose one of them
    assert "keep_largest_component" not in by[2]["steps"]
    assert by[2]["candidates"]["keep_largest_component"]["gain"] < 0
    # ... and filling the hole in it raises Dice: chosen
    assert by[2]["steps"] == ["fill_holes"]
    assert by[2]["dice_after"] == pytest.approx(1.0)
    # the plan applied to a case reproduces the chosen Dice
    pred, ref = cases[0]
    out, changed = apply_plan(pred, plan)
    assert (out == 1).sum() == (ref == 1).sum() and (out == 2).sum() == (ref == 2).sum()
    assert changed["liver:keep_largest_component"] > 0 and changed["kidney:fill_holes"] > 0


def test_a_step_that_changes_nothing_is_not_kept():
    shape = (20, 20, 10)
    ref = _ball(shape, (10, 10, 5), 4).astype(np.uint8)
    plan = choose_postprocessing([(ref.copy(), ref)])
    assert plan["labels"][0]["steps"] == []  # equal Dice is no gain
    assert plan["labels"][0]["dice_before"] == plan["labels"][0]["dice_after"] == 1.0


def test_steps_touch_only_their_label_and_background():
    m = np.zeros((9, 9, 3), np.uint8)
    m[1:8, 1:8, :] = 1
    m[3:6, 3:6, 1] = 0  # background hole enclosed by 1
    m[4, 4, 1] = 2      # another label inside the hole
    filled = fill_holes(m, 1)
    assert filled[4, 4, 1] == 2 and filled[3, 3, 1] == 1
    m2 = m.copy()
    m2[0, 0, 0] = 2  # a second component of label 2
    kept = keep_largest_component(m2, 1)
    np.testing.assert_array_equal(kept, m2)  # label 1 is one component; label 2 untouched


def test_plan_round_trip_and_label_check(tmp_path):
    plan = choose_postprocessing([_case_with_island(0)], label_names=["background", "liver", "kidney"])
    path = write_plan(plan, tmp_path / "postprocessing.json")
    assert load_plan(path, label_names=["background", "liver", "kidney"]) == json.loads(path.read_text())
    with pytest.raises(InputError, match="chosen for labels"):
        load_plan(path, label_names=["background", "spleen", "kidney"])
    (tmp_path / "bad.json").write_text('{"kind": "something else"}')
    with pytest.raises(InputError, match="not a medeff post-processing plan"):
        load_plan(tmp_path / "bad.json")


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="candidate"):
        choose_postprocessing([], candidates=["dilate"])
    with pytest.raises(ConfigError, match="min_gain"):
        choose_postprocessing([], min_gain=-1)
    with pytest.raises(InputError, match="No validation cases"):
        choose_postprocessing([])


def test_pairs_from_folders_of_several_folds(tmp_path):
    for fold in range(2):
        for role in ("pred", "ref"):
            (tmp_path / f"{role}{fold}").mkdir()
        pred, ref = _case_with_island(fold)
        for role, arr in (("pred", pred), ("ref", ref)):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / f"{role}{fold}" / f"case{fold}.nii.gz")
    n, pairs = validation_pairs(prediction_dir=[tmp_path / "pred0", tmp_path / "pred1"],
                                reference_dir=[tmp_path / "ref0", tmp_path / "ref1"])
    assert n == 2
    plan = choose_postprocessing(pairs, n_cases=n)
    assert plan["n_cases"] == 2 and plan["labels"][0]["steps"] == ["keep_largest_component"]
    nib.save(nib.Nifti1Image(pred[:, :, :10], np.eye(4)), tmp_path / "pred1" / "case1.nii.gz")
    n, pairs = validation_pairs(prediction_dir=tmp_path / "pred1", reference_dir=tmp_path / "ref1")
    with pytest.raises(InputError, match="not on one grid"):
        list(pairs)
