"""No patient identifier reaches the index, the logs or the errors; the mapping file is written only on request."""

from __future__ import annotations

import csv
import logging

import pytest
from index_fixtures import (SECRET_ACCESSION, SECRET_BIRTH, SECRET_ID, SECRET_INSTITUTION, SECRET_NAME, volume,
                      write_dicom_series, write_nifti)

from medeff.cli.main import main
from medeff.data import build_index, load_index
from medeff.errors import ConfigError, IndexValidationError

SECRETS = [SECRET_ID, SECRET_NAME, SECRET_NAME.replace("^", " "), SECRET_BIRTH, SECRET_ACCESSION, SECRET_INSTITUTION,
           "Musterfrau", "Erika"]


def _dicom_tree(root):
    write_dicom_series(root / "scan_a" / "s1", series_uid="1.2.826.0.1.1.1", study_uid="1.2.826.0.1.9.1", seed=1)
    write_dicom_series(root / "scan_a" / "s2", series_uid="1.2.826.0.1.1.2", study_uid="1.2.826.0.1.9.1", seed=2)
    write_dicom_series(root / "scan_b" / "s1", series_uid="1.2.826.0.1.1.3", study_uid="1.2.826.0.1.9.2",
                       patient_id="PAT-SECRET-0999", patient_name="Other^Person", seed=3)
    write_dicom_series(root / "scan_c" / "s1", series_uid="1.2.826.0.1.1.4", study_uid="1.2.826.0.1.9.3",
                       patient_id="PAT-SECRET-0777", patient_name="Third^Person", seed=4)
    return root


def test_dicom_identifiers_never_reach_the_index_or_logs(tmp_path, cfg_over, caplog, capsys):
    root = _dicom_tree(tmp_path / "dicom")
    out = tmp_path / "out" / "index.json"
    private = tmp_path / "private" / "mapping.csv"
    caplog.set_level(logging.DEBUG, logger="medeff")
    rc = main(["index", str(root), str(out), "folds.k=3", "pseudonym.salt=s", "--mapping", str(private)])
    assert rc == 0
    text = out.read_text()
    logs = caplog.text + "".join(capsys.readouterr())
    for secret in SECRETS + ["PAT-SECRET-0999", "Other^Person", "PAT-SECRET-0777"]:
        assert secret not in text, secret
        assert secret not in logs, secret
    idx = load_index(out)
    # the two series of one patient share a group and hence a fold
    groups = {c.image[0]: c.group for c in idx.all_cases}
    assert groups["scan_a/s1"] == groups["scan_a/s2"] != groups["scan_b/s1"]
    assert all(c.case_id.startswith("case_") and c.group.startswith("grp_") for c in idx.all_cases)
    # the mapping exists only where asked, and maps pseudonyms back
    rows = list(csv.DictReader(private.open()))
    assert {r["kind"] for r in rows} == {"case", "group"}
    group_rows = {r["pseudonym"]: r["original"] for r in rows if r["kind"] == "group"}
    assert group_rows[groups["scan_a/s1"]] == f"patient:{SECRET_ID}"
    assert sorted(p.name for p in out.parent.iterdir()) == ["index.json"]


def test_mapping_beside_the_index_is_refused(tmp_path, rng, cfg_over):
    img, lab = volume(rng)
    write_nifti(tmp_path / "src" / "imagesTr" / "a.nii.gz", img)
    write_nifti(tmp_path / "src" / "labelsTr" / "a.nii.gz", lab)
    write_nifti(tmp_path / "src" / "imagesTr" / "b.nii.gz", img + 1)
    write_nifti(tmp_path / "src" / "labelsTr" / "b.nii.gz", lab)
    out = tmp_path / "out" / "index.json"
    with pytest.raises(ConfigError, match="beside the index"):
        build_index(tmp_path / "src", out, cfg_over("folds.k=2", f"pseudonym.mapping_out={tmp_path}/out/map.csv"))
    assert not out.exists()


def test_csv_patient_names_are_pseudonymised(tmp_path, rng, cfg_over):
    root = tmp_path / "csv"
    names = ["Mueller^Hans", "Schmidt^Anna", "Meier^Karl", "Weber^Eva"]
    rows = ["image,label,patient_id,patient_name,diameter_mm"]
    for i, name in enumerate(names * 2):
        img, _ = volume(rng)
        write_nifti(root / f"img{i}.nii.gz", img)
        rows.append(f"img{i}.nii.gz,{i % 2},{name},{name},{10 + i}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "o" / "i.json"
    idx = build_index(root / "list.csv", out, cfg_over("folds.k=2"))
    text = out.read_text()
    for n in names:
        for part in n.split("^"):
            assert part not in text
    assert "\"patient_name\"" not in text and all("diameter_mm" in c.metadata for c in idx.all_cases)
    assert len({c.group for c in idx.all_cases}) == 4


def test_identifier_in_a_path_is_refused_without_echoing_it(tmp_path, cfg_over):
    root = tmp_path / "dicom"
    write_dicom_series(root / SECRET_ID / "s1", series_uid="1.2.826.0.1.2.1", study_uid="1.2.826.0.1.9.1")
    write_dicom_series(root / "anon" / "s1", series_uid="1.2.826.0.1.2.2", study_uid="1.2.826.0.1.9.2",
                       patient_id="PAT-SECRET-0999", seed=5)
    with pytest.raises(IndexValidationError) as ei:
        build_index(root, tmp_path / "o" / "i.json", cfg_over("folds.k=2"))
    assert "contains the patient identifier" in str(ei.value)
    assert len(ei.value.problems) == 1
    msg = str(ei.value).replace(str(root), "<root>")
    assert SECRET_ID not in "".join(p.problem + p.fix + p.case_id for p in ei.value.problems)
    assert "PAT-SECRET-0999" not in msg
    idx = build_index(root, tmp_path / "o" / "i.json",
                      cfg_over("folds.k=2", "pseudonym.forbid_identifiers_in_paths=false"))
    assert len(idx.all_cases) == 2
