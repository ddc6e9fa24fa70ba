"""The one pseudonymiser (medeff.utils.pseudonyms) and the call sites that must use it."""

from __future__ import annotations

import ast
import hashlib
import hmac
from pathlib import Path

import pytest

from medeff.utils.pseudonyms import Pseudonymiser

ROOT = Path(__file__).resolve().parents[2]
IDENTIFIER = "DOE^JANE_MRN884213"


def test_same_input_and_key_give_same_pseudonym():
    a = Pseudonymiser("k1", prefix="grp_")
    b = Pseudonymiser("k1", prefix="grp_")
    assert a(IDENTIFIER) == b(IDENTIFIER)
    assert a.stable and b.stable


def test_different_key_gives_different_pseudonym():
    assert Pseudonymiser("k1", prefix="grp_")(IDENTIFIER) != Pseudonymiser("k2", prefix="grp_")(IDENTIFIER)
    # without a key each instance draws its own: not linkable, not stable
    r1, r2 = Pseudonymiser(prefix="grp_"), Pseudonymiser(prefix="grp_")
    assert r1(IDENTIFIER) != r2(IDENTIFIER) and not r1.stable


def test_documented_format_is_prefix_plus_hmac_sha256_hex():
    want = hmac.new(b"s3cret", IDENTIFIER.encode("utf-8"), hashlib.sha256).hexdigest()[:12]
    assert Pseudonymiser("s3cret", prefix="grp_")(IDENTIFIER) == f"grp_{want}"
    assert Pseudonymiser("s3cret", prefix="P-", length=16)(IDENTIFIER) == "P-" + hmac.new(
        b"s3cret", IDENTIFIER.encode(), hashlib.sha256).hexdigest()[:16]
    # the twin shares the key
    p = Pseudonymiser("s3cret", prefix="C-")
    assert p.with_prefix("grp_")(IDENTIFIER) == f"grp_{want}"


def test_no_identifier_substring_survives():
    values = [IDENTIFIER, "MRN884213", "patient_0042", "19700101", "abcdef"]
    mapping = Pseudonymiser("k", prefix="grp_").map(values)
    for original, pseudo in mapping.items():
        body = pseudo.removeprefix("grp_")
        assert len(body) == 12 and all(ch in "0123456789abcdef" for ch in body)
        # no 4-character run of the original reaches the pseudonym
        runs = {original[i:i + 4] for i in range(len(original) - 3)}
        assert not any(r in pseudo for r in runs), (original, pseudo)


def test_key_from_environment_only_when_asked(monkeypatch):
    monkeypatch.setenv("MEDEFF_PSEUDONYM_SALT", "envkey")
    assert Pseudonymiser(env="MEDEFF_PSEUDONYM_SALT")("x") == Pseudonymiser("envkey")("x")
    assert not Pseudonymiser()("x") == Pseudonymiser("envkey")("x")


def test_collision_is_refused():
    from medeff.errors import MedeffError

    p = Pseudonymiser("k", length=4)
    with pytest.raises(MedeffError, match="same pseudonym"):
        p.map(str(i) for i in range(2000))  # 16 bits: a collision among 2000 values is certain enough


def test_utils_module_imports_no_heavy_or_higher_layer():
    tree = ast.parse((ROOT / "medeff/utils/pseudonyms.py").read_text())
    mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in mods if m.split(".")[0] in ("torch", "numpy", "lightning", "monai", "pandas")}
    assert not {m for m in mods if m.startswith("medeff.") and m not in ("medeff.errors",)}


def _hashing_modules():
    """medeff modules that import ``hmac`` to compute keyed hashes themselves (only the one pseudonymiser may)."""
    out = []
    for path in sorted((ROOT / "medeff").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if "hmac" in names:
            out.append(path.relative_to(ROOT).as_posix())
    return out


def test_only_one_module_computes_keyed_hashes():
    assert _hashing_modules() == ["medeff/utils/pseudonyms.py"]


@pytest.mark.parametrize("module", ["medeff/data/index_build.py", "medeff/evaluation/tables.py",
                                    "medeff/evaluation/privacy.py", "medeff/engine/predict_inputs.py",
                                    "medeff/engine/dicom_seg.py", "medeff/data/crops.py"])
def test_call_sites_use_the_one_class(module):
    text = (ROOT / module).read_text()
    assert "from medeff.utils.pseudonyms import" in text and "Pseudonymiser" in text


@pytest.mark.parametrize("module", ["medeff/evaluation/classification.py", "medeff/evaluation/segmentation.py"])
def test_evaluation_commands_use_the_evaluation_pseudonymiser(module):
    assert "pseudo = evaluation_pseudonymiser(pseudonym_salt)" in (ROOT / module).read_text()


def test_evaluation_pseudonyms_keep_their_format(monkeypatch):
    import pandas as pd

    from medeff.evaluation.privacy import evaluation_pseudonymiser
    from medeff.evaluation.tables import pseudonymise_ids

    monkeypatch.delenv("MEDEFF_PSEUDONYM_SALT", raising=False)
    pseudo = evaluation_pseudonymiser("k")
    out, hashed = pseudonymise_ids(pd.Series([IDENTIFIER, "case_1"]), True, pseudo, "P")
    want = "P-" + hmac.new(b"k", IDENTIFIER.encode(), hashlib.sha256).hexdigest()[:12]
    assert hashed and out.iloc[0] == want and pseudo.stable
    assert pseudo(IDENTIFIER) == "ID-" + want[2:]
    monkeypatch.setenv("MEDEFF_PSEUDONYM_SALT", "k")
    assert evaluation_pseudonymiser(None)(IDENTIFIER) == pseudo(IDENTIFIER)


def test_old_pseudonymiser_classes_are_gone():
    import medeff.data.pseudonyms as data_pseudonyms
    import medeff.evaluation.privacy as privacy

    assert not hasattr(data_pseudonyms, "Pseudonymiser")
    assert privacy.Pseudonymiser is Pseudonymiser  # imported, not a second class


def test_no_second_pseudonymiser_class():
    hits = [p.relative_to(ROOT).as_posix() for p in (ROOT / "medeff").rglob("*.py")
            if "class Pseudonymiser" in p.read_text()]
    assert hits == ["medeff/utils/pseudonyms.py"]


def test_predict_case_ids_use_the_pseudonymiser(tmp_path):
    from medeff.engine.predict_inputs import CaseNaming

    naming = CaseNaming.from_config({"naming": "pseudonym", "salt": "s"}, tmp_path / "out")
    recs = [{"name": IDENTIFIER, "image": "x"}]
    naming.assign(recs, ["f" * 64])
    assert recs[0]["case_id"] == Pseudonymiser("s", prefix="case_")(IDENTIFIER)
    assert recs[0]["case_id"].startswith("case_") and "884213" not in recs[0]["case_id"]
