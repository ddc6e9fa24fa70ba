"""`medeff index SOURCE OUT.json key=value ...`: overrides, errors as one paragraph, atomic output."""

from __future__ import annotations

import json

from index_fixtures import write_npz_archive

from medeff.cli.main import main
from medeff.data.index_types import SCHEMA_VERSION


def test_cli_builds_index_with_overrides(tmp_path, rng, capsys):
    folder = write_npz_archive(tmp_path / "arc", rng)
    out = tmp_path / "o" / "idx.json"
    assert main(["index", str(folder), str(out), "folds.k=3", "folds.seed=5", "class_names=[benign,malignant]"]) == 0
    data = json.loads(out.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["num_folds"] == 3 and data["fold_seed"] == 5
    assert data["class_names"] == ["benign", "malignant"] and "salt" not in data["config"]["pseudonym"]
    assert {c["fold"] for c in data["cases"]} == {0, 1, 2}
    assert "cases" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["idx.json"]  # no temp files left


def test_cli_errors_are_one_paragraph(tmp_path, capsys):
    assert main(["index", str(tmp_path / "nope"), str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert err.count("\n") == 1 and str(tmp_path / "nope") in err  # one line, whatever the path length
    assert main(["index", str(tmp_path), str(tmp_path / "o.json"), "folds.kk=3"]) == 2
    err = capsys.readouterr().err
    assert "folds.kk" in err and "did you mean 'folds.k'" in err and err.count("\n") == 1


def test_task_kind_override_does_not_clash_with_the_task_config_group(tmp_path):
    """`task` is a training config group; the index option is `task_kind` and overriding it works."""
    from medeff.cli.main import main
    from medeff.demo.phantom import make_nodule_archive
    from medeff.data import load_index

    make_nodule_archive(tmp_path / "arc", n_exams=6, seed=3)
    assert main(["index", str(tmp_path / "arc"), str(tmp_path / "i.json"), "task_kind=classification"]) == 0
    assert load_index(tmp_path / "i.json").task == "classification"
    assert main(["index", str(tmp_path / "arc"), str(tmp_path / "j.json"), "task_kind=segmentation"]) == 2
