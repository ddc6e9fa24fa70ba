"""Untrusted inputs: manifest paths escaping the data root, ``_target_`` keys in data files, pickled npz archives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medeff.cli.main import main
from medeff.data import index_config
from medeff.data.index_build import build_index
from medeff.errors import ImageReadError, IndexValidationError, MedeffError

PACKAGE = Path(__file__).resolve().parents[2] / "medeff"


def _nifti(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).normal(size=(10, 10, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


def _cfg(*overrides: str):
    return index_config(["pseudonym.salt=s", "folds.k=2", *overrides])


# ----------------------------------------------------------------------------------------------- manifest paths
@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "sub/../../outside/x.nii.gz",
                                 "OUTSIDE_ABS"])
def test_manifest_paths_cannot_escape_the_root(tmp_path, bad):
    root = tmp_path / "data"
    _nifti(root / "a.nii.gz")
    outside = _nifti(tmp_path / "outside" / "x.nii.gz", seed=1)
    bad = str(outside) if bad == "OUTSIDE_ABS" else bad
    (root / "m.csv").write_text(f"image,patient_id\na.nii.gz,p1\n{bad},p2\n")
    with pytest.raises(IndexValidationError) as ei:
        build_index(root / "m.csv", tmp_path / "i.json", _cfg())
    text = str(ei.value)
    assert "outside the manifest's folder" in text and "csv.allow_outside_root=true" in text
    assert not (tmp_path / "i.json").exists()


@pytest.mark.parametrize("link", ["file", "folder", "etc", "label map"])
def test_manifest_paths_cannot_escape_the_root_through_links(tmp_path, link):
    """Links inside the root that lead outside it are outside: the check follows them (realpath), not the text."""
    root = tmp_path / "data"
    _nifti(root / "a.nii.gz")
    outside = _nifti(tmp_path / "outside" / "x.nii.gz", seed=1)
    if link == "file":
        (root / "x.nii.gz").symlink_to(outside)
        rows = "a.nii.gz,p1\nx.nii.gz,p2\n"
    elif link == "folder":
        (root / "sub").symlink_to(outside.parent, target_is_directory=True)
        rows = "a.nii.gz,p1\nsub/x.nii.gz,p2\n"
    elif link == "etc":
        (root / "sys").symlink_to("/etc", target_is_directory=True)
        rows = "a.nii.gz,p1\nsys/passwd,p2\n"
    else:
        _nifti(root / "b.nii.gz", seed=2)
        (root / "lab.nii.gz").symlink_to(outside)
        rows = "a.nii.gz,a.nii.gz,p1\nb.nii.gz,lab.nii.gz,p2\n"
    header = "image,label,patient_id" if link == "label map" else "image,patient_id"
    (root / "m.csv").write_text(f"{header}\n{rows}")
    with pytest.raises(IndexValidationError) as ei:
        build_index(root / "m.csv", tmp_path / "i.json", _cfg())
    assert "outside the manifest's folder" in str(ei.value) and "symbolic links" in str(ei.value)
    assert not (tmp_path / "i.json").exists()


def test_manifest_links_inside_the_root_are_fine(tmp_path):
    root = tmp_path / "data"
    _nifti(root / "real" / "a.nii.gz")
    _nifti(root / "b.nii.gz", seed=2)
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    (tmp_path / "data_link").symlink_to(root, target_is_directory=True)  # the root itself reached through a link
    (root / "m.csv").write_text("image,patient_id\nalias/a.nii.gz,p1\nb.nii.gz,p2\n")
    assert len(build_index(tmp_path / "data_link" / "m.csv", tmp_path / "i.json", _cfg()).all_cases) == 2


def test_manifest_paths_outside_root_allowed_by_option(tmp_path):
    root = tmp_path / "data"
    _nifti(root / "a.nii.gz")
    _nifti(tmp_path / "outside" / "x.nii.gz", seed=1)
    (root / "m.csv").write_text("image,patient_id\na.nii.gz,p1\n../outside/x.nii.gz,p2\n")
    idx = build_index(root / "m.csv", tmp_path / "i.json", _cfg("csv.allow_outside_root=true"))
    assert len(idx.all_cases) == 2


def test_manifest_inside_paths_with_dotdot_are_fine(tmp_path):
    root = tmp_path / "data"
    _nifti(root / "sub" / "a.nii.gz")
    _nifti(root / "b.nii.gz", seed=2)
    (root / "m.csv").write_text("image,patient_id\nsub/../sub/a.nii.gz,p1\nb.nii.gz,p2\n")
    assert len(build_index(root / "m.csv", tmp_path / "i.json", _cfg()).all_cases) == 2


def test_cli_refusal_is_one_paragraph(tmp_path, capsys):
    root = tmp_path / "data"
    _nifti(root / "a.nii.gz")
    (root / "m.csv").write_text("image,patient_id\na.nii.gz,p1\n../../etc/passwd,p2\n")
    assert main(["index", str(root / "m.csv"), str(tmp_path / "i.json"), "folds.k=2"]) == 2
    err = capsys.readouterr().err
    assert "outside the manifest's folder" in " ".join(err.split()) and "Traceback" not in err


# ----------------------------------------------------------------------------------------------- _target_ keys
def test_no_instantiate_in_data_layer_and_reports():
    """Nothing in io/data/evaluation (nor the data CLIs) builds objects from config or data content."""
    files = [*(PACKAGE / "io").glob("*.py"), *(PACKAGE / "evaluation").glob("*.py"),
             *[p for p in (PACKAGE / "data").glob("*.py") if p.name not in ("datamodule.py", "transforms.py")],
             *[PACKAGE / "cli" / f"{n}.py" for n in ("convert", "index", "evaluate", "report")]]
    assert len(files) > 20
    hits = [f"{p.name}: {m.group(0)}" for p in files
            for m in re.finditer(r"instantiate|_target_|pickle\.load|allow_pickle\s*=\s*True|eval\(|exec\(",
                                 p.read_text())]
    assert hits == []


def test_target_keys_in_manifest_and_index_are_data(tmp_path, monkeypatch):
    import hydra.utils

    def forbidden(*args, **kwargs):
        raise AssertionError("hydra.utils.instantiate called on data")

    monkeypatch.setattr(hydra.utils, "instantiate", forbidden)
    root = tmp_path / "data"
    _nifti(root / "a.nii.gz")
    _nifti(root / "b.nii.gz", seed=3)
    marker = tmp_path / "pwned"
    payload = f"os.system('touch {marker}')"
    (root / "m.csv").write_text("image,patient_id,_target_,note\n"
                                f"a.nii.gz,p1,builtins.exec,\"{payload}\"\nb.nii.gz,p2,os.system,x\n")
    out = tmp_path / "i.json"
    build_index(root / "m.csv", out, _cfg())
    data = json.loads(out.read_text())
    metas = [c["metadata"] for c in data["cases"]]
    assert sorted(m["_target_"] for m in metas) == ["builtins.exec", "os.system"]
    # an index JSON carrying _target_ keys anywhere loads as plain data
    data["_target_"] = "os.system"
    data["cases"][0]["_target_"] = "builtins.exec"
    out.write_text(json.dumps(data))
    from medeff.data.index_validation import load_index

    idx = load_index(out)
    assert {c.metadata["_target_"] for c in idx.all_cases} == {"builtins.exec", "os.system"}
    assert not marker.exists()


def test_target_column_in_predictions_is_data(tmp_path, monkeypatch):
    import hydra.utils
    import pandas as pd

    monkeypatch.setattr(hydra.utils, "instantiate", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    df = pd.DataFrame({"case_id": [f"c{i}" for i in range(40)], "label": y, "score": rng.random(40),
                       "_target_": "os.system"})
    df.to_csv(tmp_path / "p.csv", index=False)
    out = tmp_path / "ev"
    assert main(["evaluate", f"classification.predictions={tmp_path / 'p.csv'}", "bootstrap.n_resamples=20",
                 f"output_dir={out}", "formats=[json]"]) == 0
    assert json.loads((out / "summary.json").read_text())["kind"] == "classification"


# ----------------------------------------------------------------------------------------------- npz
def test_object_array_npz_is_refused(tmp_path):
    from medeff.data.index_images import load_archive_array

    path = tmp_path / "a.npz"
    np.savez(path, images=np.array([{"x": 1}, "evil"], dtype=object), labels=np.array([0, 1]))
    with pytest.raises(ImageReadError, match="pickled objects") as ei:
        load_archive_array(path, "images")
    assert "a.npz" in str(ei.value)
    with pytest.raises(MedeffError):
        build_index(path, tmp_path / "i.json", _cfg())
    assert not (tmp_path / "i.json").exists()
