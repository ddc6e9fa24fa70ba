"""File paths inside an index JSON may not escape the index's root (unless the index says it is trusted)."""

from __future__ import annotations

import json
import shutil

import pytest

from medeff.data import build_index, load_index
from medeff.errors import IndexValidationError, MedeffError


@pytest.fixture()
def built(nifti_folders, tmp_path, cfg_over):
    out = tmp_path / "index.json"
    build_index(nifti_folders, out, cfg_over("folds.k=2"))
    return out, nifti_folders


@pytest.mark.parametrize("field", ["image", "label"])
@pytest.mark.parametrize("escape", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.nii.gz"])
def test_paths_escaping_the_root_are_refused(built, field, escape):
    out, _ = built
    data = json.loads(out.read_text())
    case = data["cases"][1]
    case[field] = [escape] if field == "image" else escape
    out.write_text(json.dumps(data))
    for kwargs in ({}, {"check_files": False}):
        with pytest.raises(IndexValidationError) as ei:
            load_index(out, **kwargs)
        text = str(ei.value)
        assert isinstance(ei.value, MedeffError)
        assert str(out) in text and case["case_id"] in text and escape in text
        assert "outside the index root" in text and "Fix:" in text and "allow_outside_root=True" in text
        assert [p.case_id for p in ei.value.problems] == [case["case_id"]]


def test_archive_path_escaping_the_root_is_refused(built):
    out, _ = built
    data = json.loads(out.read_text())
    data["cases"][0]["archive"] = {"path": "../../secret.npz", "key": "images", "rows": [0]}
    out.write_text(json.dumps(data))
    with pytest.raises(IndexValidationError, match="archive.path lies outside the index root"):
        load_index(out, check_files=False)


def test_legitimate_layouts_still_load(built, tmp_path):
    out, root = built
    data = json.loads(out.read_text())
    # an absolute path under the root and a '..' that stays inside are fine
    data["cases"][0]["image"] = [str(root / data["cases"][0]["image"][0])]
    first = data["cases"][1]["image"][0]
    data["cases"][1]["image"] = [f"{first.split('/')[0]}/../{first}"]
    out.write_text(json.dumps(data))
    assert len(load_index(out).all_cases) == 8
    moved = tmp_path / "moved"  # moved data: checked against the new root
    shutil.move(str(root), str(moved))
    data["cases"][0]["image"] = [first]
    out.write_text(json.dumps(data))
    assert len(load_index(out, root=moved).all_cases) == 8


def test_explicit_opt_in_accepts_outside_paths(built, tmp_path):
    out, root = built
    data = json.loads(out.read_text())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    img = root / data["cases"][0]["image"][0]
    shutil.copy(img, outside / img.name)
    data["cases"][0]["image"] = [str(outside / img.name)]
    out.write_text(json.dumps(data))
    with pytest.raises(IndexValidationError, match="outside the index root"):
        load_index(out)
    assert len(load_index(out, allow_outside_root=True).all_cases) == 8
    data["config"]["csv"]["allow_outside_root"] = True  # recorded by `medeff index csv.allow_outside_root=true`
    out.write_text(json.dumps(data))
    assert len(load_index(out).all_cases) == 8
    with pytest.raises(IndexValidationError):
        load_index(out, allow_outside_root=False)


def test_manifest_built_with_the_option_loads_again(tmp_path, cfg_over, rng):
    from index_fixtures import volume, write_nifti

    root = tmp_path / "data"
    root.mkdir()
    for i, where in enumerate([root / "a.nii.gz", tmp_path / "outside" / "x.nii.gz"]):
        where.parent.mkdir(parents=True, exist_ok=True)
        write_nifti(where, volume(rng)[0])
    (root / "m.csv").write_text("image,patient_id\na.nii.gz,p1\n../outside/x.nii.gz,p2\n")
    out = tmp_path / "i.json"
    build_index(root / "m.csv", out, cfg_over("folds.k=2", "csv.allow_outside_root=true"))
    assert len(load_index(out).all_cases) == 2
