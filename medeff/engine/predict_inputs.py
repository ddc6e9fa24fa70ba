"""What ``medeff predict`` predicts: input discovery, case ids, input fingerprints and the names withheld from output.

Inputs (``input=``):

* a dataset index (``.json``): its cases, under the index's case ids (pseudonyms already);
* a ``.npz`` slice archive: one case per ``nodule_key`` (the archive's own keys);
* a NIfTI file, or a folder of NIfTI files: one case per file;
* a DICOM folder: one case per folder holding a series (``study/patientA``, ``study/patientB`` are two cases); series
  of one patient sharing a folder are one case (the reader picks the largest axial CT, see ``docs/data.md``),
  series of several patients in one folder are refused.

Case ids of NIfTI and DICOM inputs (``case_ids.naming``): ``pseudonym`` (default) names every case
``case_<12 hex digits>``: with ``case_ids.salt`` the keyed hash (HMAC-SHA256) of the input's name, reproducible
across folders and machines; without, the first digits of the input's content fingerprint (SHA-256 of its bytes),
stable across reruns and unrelated to the name. The input's name then appears in no output file name, file content,
log line or error (see :class:`medeff.utils.redact.Redactor`). ``input`` keeps the input's name (for de-identified
data only). The mapping input -> case id is written only to ``case_ids.mapping_out``, a path outside the outputs.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medeff.errors import ConfigError, InputError, MedeffError, OutputWriteError
from medeff.utils.atomic import write_text_atomic
from medeff.utils.options import look_up
from medeff.utils.pseudonyms import Pseudonymiser
from medeff.utils.redact import Redactor

__all__ = ["Inputs", "CaseNaming", "NAMINGS", "discover", "list_inputs", "check_output_dir", "fingerprint",
           "check_duplicates"]

NIFTI = (".nii.gz", ".nii")
NAMINGS = ("pseudonym", "input")
_CHUNK = 1 << 20


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith(NIFTI)


def _stem(p: Path) -> str:
    name = p.name
    for suf in NIFTI:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


@dataclass
class Inputs:
    """Discovered cases.

    Attributes:
        kind: ``archive`` or ``volume``.
        records: one dict per case: ``image``, ``case_id`` and, for cases named from a path, ``name`` (the name a
            case id is derived from) and ``secrets`` (path parts that may name the patient).
        errors: refusals found while discovering (raised by the caller once names are withheld).
        secrets: further path parts to withhold that belong to no case.
    """

    kind: str
    records: list[dict[str, Any]]
    errors: list[MedeffError] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)


def check_output_dir(out_dir: str | Path) -> Path:
    """Refuse an ``output_dir`` that is (or lies under) an existing file, before anything is loaded.

    Raises:
        OutputWriteError: naming the file.
    """
    out_dir = Path(out_dir)
    for p in [out_dir, *out_dir.parents]:
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == out_dir else f"lies under '{p}', which is a file"
                raise OutputWriteError(f"output_dir '{out_dir}' {where}, not a folder.",
                                       hint="pass output_dir=FOLDER: a new folder or an existing one.", path=str(p))
            break
    return out_dir


def discover(path: str | Path) -> Inputs:
    """Turn ``input`` into case records (see the module docstring).

    Raises:
        InputError: the path is missing, or an index/archive is unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input '{path}' does not exist.", hint="pass input=FILE_OR_FOLDER.", path=str(path))
    if path.suffix == ".json":
        from medeff.data.datamodule import load_dataset_index

        recs = load_dataset_index(path).records(fold=None)
        if any("archive_key" in r for r in recs):
            return Inputs("archive", recs)
        return Inputs("volume", [{"image": r["image"], "case_id": r["case_id"]} for r in recs])
    if path.suffix == ".npz":
        return Inputs("archive", _archive_records(path))
    if path.is_file():
        return Inputs("volume", [_named(path, _stem(path), [_stem(path)])])
    niftis = sorted(p for p in path.iterdir() if p.is_file() and _is_nifti(p))
    if niftis:
        return Inputs("volume", [_named(p, _stem(p), [_stem(p)]) for p in niftis])
    return _dicom_cases(path)


def list_inputs(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """``(kind, records)`` of :func:`discover`, raising its first refusal.

    Raises:
        InputError: see :func:`discover`; several patients' series in one folder.
    """
    found = discover(path)
    if found.errors:
        raise found.errors[0]
    return found.kind, found.records


def _named(image: Path, name: str, secrets: Sequence[str]) -> dict[str, Any]:
    return {"image": str(image), "case_id": name, "name": name, "secrets": [s for s in secrets if s]}


def _dicom_cases(path: Path) -> Inputs:
    from medeff.io.dicom_scan import find_series

    series = find_series(path)
    folders: dict[Path, list] = {}
    for info in series:
        folders.setdefault(Path(info.folder), []).append(info)
    if len(folders) <= 1:
        out = Inputs("volume", [_named(path, path.name, [path.name])])
        for folder, infos in folders.items():
            out.secrets += list(folder.relative_to(path).parts) if folder != path else []
            if len({i.patient_key for i in infos}) > 1:
                out.errors.append(_mixed(folder, infos))
        return out
    out = Inputs("volume", [])
    ordered = sorted(folders)
    for folder in ordered:
        rel = folder.relative_to(path).parts if folder != path else (path.name,)
        out.records.append(_named(folder, "_".join(rel), list(rel)))
        infos = folders[folder]
        if len({i.patient_key for i in infos}) > 1:
            out.errors.append(_mixed(folder, infos))
        inner = [f for f in ordered if f != folder and folder in f.parents]
        if inner:
            out.errors.append(InputError(
                f"DICOM folder '{folder}' holds a series and, in its sub-folder '{inner[0]}', another one; each "
                "case of a study must be a folder of its own.",
                hint="move the series in the outer folder into a sub-folder of its own.", path=str(folder)))
    return out


def _mixed(folder: Path, infos: Sequence[Any]) -> InputError:
    listing = "; ".join(f"{i.modality or '?'} series ...{i.series_uid[-8:]} ({i.n_files} files)" for i in infos)
    return InputError(f"DICOM folder '{folder}' holds series of several patients ({listing}); medeff predicts one "
                      "patient's series per folder.",
                      hint="put each patient's series in a folder of its own (study/patientA, study/patientB) "
                           "and pass the study folder.", path=str(folder))


def _archive_records(path: Path) -> list[dict[str, Any]]:
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files:
            raise InputError(f"Archive '{path}' has no 'images' array (it holds {sorted(z.files)}).",
                             hint="store slices as images[row, H, W].", path=str(path))
        n = len(z["images"])
        keys = z["nodule_key"].astype(str) if "nodule_key" in z.files else np.asarray([f"row{i}" for i in range(n)])
        order = z["slice_index"] if "slice_index" in z.files else np.zeros(n, dtype=int)
    cases: dict[str, list[int]] = {}
    for row in range(n):
        cases.setdefault(str(keys[row]), []).append(int(row))
    for rows in cases.values():
        rows.sort(key=lambda r: (order[r], r))
    return [{"image": str(path), "archive_key": "images", "rows": rows, "case_id": cid} for cid, rows in cases.items()]


# ----------------------------------------------------------------------------------------------- fingerprints
def _file_digest(path: Path, cache: dict[str, str]) -> str:
    key = str(path)
    if key not in cache:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
        except OSError:  # unreadable: reported when the case is read
            h.update(b"unreadable")
        cache[key] = h.hexdigest()
    return cache[key]


def _path_digest(path: Path, cache: dict[str, str]) -> str:
    if not path.is_dir():
        return _file_digest(path, cache)
    h = hashlib.sha256(b"folder")
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(hashlib.sha256(str(f.relative_to(path)).encode()).digest())
        h.update(_file_digest(f, cache).encode())
    return h.hexdigest()


def fingerprint(rec: Mapping[str, Any], cache: dict[str, str] | None = None) -> str:
    """SHA-256 over the bytes a case is predicted from (its file, every file of its folder, or its archive rows)."""
    cache = {} if cache is None else cache
    h = hashlib.sha256()
    images = rec["image"] if isinstance(rec["image"], (list, tuple)) else [rec["image"]]
    for image in images:
        h.update(_path_digest(Path(image), cache).encode())
    if "archive_key" in rec:
        h.update(json_bytes([rec["archive_key"], [int(r) for r in rec["rows"]], str(rec["case_id"])]))
    return h.hexdigest()


def json_bytes(obj: Any) -> bytes:
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------------------------- case ids
@dataclass
class CaseNaming:
    """``case_ids`` of ``conf/predict.yaml``: how cases named from their path get their ids.

    Args:
        naming: ``pseudonym`` or ``input``.
        salt: key of the name hash (None: ids from the content fingerprint).
        mapping_out: where to write the mapping input -> case id (None: nowhere).
    """

    naming: str = "pseudonym"
    salt: str | None = None
    mapping_out: Path | None = None

    @classmethod
    def from_config(cls, value: Mapping[str, Any] | None, out_dir: Path) -> CaseNaming:
        """Validate ``case_ids``.

        Raises:
            ConfigError: an unknown key or naming, or a mapping path inside ``out_dir``.
        """
        value = dict(value or {})
        unknown = set(value) - {"naming", "salt", "mapping_out"}
        if unknown:
            raise ConfigError(f"Unknown key(s) {sorted(unknown)} in case_ids.",
                              hint="valid keys: naming, salt, mapping_out.")
        naming = look_up(str(value.get("naming") or "pseudonym"), NAMINGS, what="case id naming",
                         key="case_ids.naming")
        salt = value.get("salt")
        mapping = Path(str(value["mapping_out"])).expanduser() if value.get("mapping_out") else None
        if mapping is not None:
            m, o = mapping.resolve(), out_dir.expanduser().resolve()
            if m == o or o in m.parents:
                raise ConfigError(f"case_ids.mapping_out '{mapping}' lies inside output_dir '{out_dir}'. The mapping "
                                  "links case ids back to input names and must stay out of the outputs.",
                                  hint="give case_ids.mapping_out a path in a private folder outside output_dir.")
        return cls(naming=naming, salt=None if salt in (None, "") else str(salt), mapping_out=mapping)

    def assign(self, records: list[dict[str, Any]], fingerprints: Sequence[str]) -> None:
        """Set ``case_id`` of every record named from its path."""
        for rec, fp in zip(records, fingerprints):
            if rec.get("name") is None:
                continue
            if self.naming == "input":
                rec["case_id"] = rec["name"]
            elif self.salt is not None:
                rec["case_id"] = Pseudonymiser(self.salt, prefix="case_")(rec["name"])
            else:
                rec["case_id"] = f"case_{fp[:12]}"

    def redactor(self, found: Inputs) -> Redactor:
        """The names to withhold: none with ``naming=input``, else every path part a case was named from."""
        if self.naming == "input":
            return Redactor()
        secrets = {s: "<folder>" for s in found.secrets}
        for rec in found.records:
            secrets.update({s: f"<{rec['case_id']}>" for s in rec.get("secrets", ())})
        return Redactor(secrets)

    def settings(self) -> dict[str, Any]:
        """What of the naming changes the outputs (the salt only as a digest)."""
        salt = None if self.salt is None else hashlib.sha256(self.salt.encode()).hexdigest()
        return {"naming": self.naming, "salt": salt}

    def write_mapping(self, records: Sequence[Mapping[str, Any]]) -> Path | None:
        """Write ``input,case_id`` for every case named from its path to ``mapping_out`` (when set)."""
        if self.mapping_out is None:
            return None
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["input", "case_id"])
        w.writerows([str(r["image"]), r["case_id"]] for r in records if r.get("name") is not None)
        return write_text_atomic(self.mapping_out, buf.getvalue())


def check_duplicates(records: Sequence[Mapping[str, Any]]) -> None:
    """Refuse two inputs with one name or one case id (they would write one output), before any inference.

    Raises:
        InputError: naming both inputs.
    """
    by_name: dict[str, Mapping[str, Any]] = {}
    by_id: dict[str, Mapping[str, Any]] = {}
    for rec in records:
        name = rec.get("name")
        if name is not None and name in by_name:
            _duplicate(by_name[name], rec, f"have the same name '{name}', so the same case id")
        if str(rec["case_id"]) in by_id:
            _duplicate(by_id[str(rec["case_id"])], rec, f"have the same case id '{rec['case_id']}'")
        if name is not None:
            by_name[name] = rec
        by_id[str(rec["case_id"])] = rec


def _duplicate(a: Mapping[str, Any], b: Mapping[str, Any], what: str) -> None:
    def where(r):
        return f"'{r['image']}'" + (f" (rows {r['rows'][0]}..)" if "rows" in r else "")

    raise InputError(f"Two inputs {what}: {where(a)} and {where(b)}; their outputs would overwrite each other.",
                     hint="remove or rename one of them (the same image twice, e.g. .nii beside .nii.gz, is one "
                          "case).", path=str(b["image"]))
