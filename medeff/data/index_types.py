"""Typed representation of a dataset index (the JSON contract written by ``medeff index``).

The index is the single source of truth for which cases exist, where their files are, their labels, their
patient groups (pseudonymised) and their cross-validation folds. Folds are written once by the indexer and read
back here, never recomputed. See ``docs/dataset_index.md`` for every field.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medeff.errors import IndexValidationError

__all__ = [
    "FORMAT_NAME",
    "SCHEMA_VERSION",
    "TASKS",
    "ArchiveRef",
    "CaseRecord",
    "DatasetIndex",
]

FORMAT_NAME = "medeff-dataset-index"
SCHEMA_VERSION = 1
TASKS = ("segmentation", "classification", "unlabelled")


@dataclass(frozen=True)
class ArchiveRef:
    """Rows of an array archive (``.npz``) that make up one case.

    Attributes:
        path: archive file, relative to the index root (or absolute).
        key: name of the image array inside the archive (indexed ``[row, ...spatial]``).
        rows: row numbers of this case, in slice order.
    """

    path: str
    key: str
    rows: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key, "rows": list(self.rows)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ArchiveRef:
        return cls(path=str(d["path"]), key=str(d["key"]), rows=tuple(int(r) for r in d["rows"]))


@dataclass
class CaseRecord:
    """One case of the index.

    Attributes:
        case_id: pseudonymous id (never derived from a patient identifier).
        image: image files, one per channel, relative to the index root (empty for archive cases).
        label: label map path (segmentation), class index (classification) or None (unlabelled).
        group: pseudonymised patient/group id; folds never split a group.
        fold: cross-validation fold, ``0 .. num_folds-1``.
        archive: rows of an array archive, for archive cases.
        series_uid: DICOM SeriesInstanceUID when ``image`` is a DICOM folder holding several series.
        metadata: extra per-case values kept for subgroup analysis (e.g. ``diameter_mm``).
        fingerprint: per-case statistics (shape, spacing, orientation, intensities, label voxels, hash).
    """

    case_id: str
    image: list[str]
    label: str | int | None
    group: str
    fold: int
    archive: ArchiveRef | None = None
    series_uid: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {
            "case_id": self.case_id,
            "image": list(self.image),
            "label": self.label,
            "group": self.group,
            "fold": self.fold,
        }
        if self.archive is not None:
            d["archive"] = self.archive.to_json()
        if self.series_uid is not None:
            d["series_uid"] = self.series_uid
        d["metadata"] = dict(self.metadata)
        d["fingerprint"] = dict(self.fingerprint)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CaseRecord:
        return cls(
            case_id=str(d["case_id"]),
            image=[str(p) for p in d.get("image", [])],
            label=d.get("label"),
            group=str(d["group"]),
            fold=int(d["fold"]),
            archive=ArchiveRef.from_json(d["archive"]) if d.get("archive") else None,
            series_uid=d.get("series_uid"),
            metadata=dict(d.get("metadata") or {}),
            fingerprint=dict(d.get("fingerprint") or {}),
        )


@dataclass
class DatasetIndex:
    """A dataset index: header fields plus the case records.

    Attributes:
        task: "segmentation", "classification" or "unlabelled".
        source_kind: "dicom", "nifti", "csv" or "archive".
        root: folder that relative paths in the records are resolved against.
        spatial_dims: 2 or 3 (for archive cases: dimensionality of one row).
        channel_names: one name per image channel.
        labels: label name -> integer value in the label maps (segmentation; background = 0).
        class_names: class index -> name (classification).
        num_folds: number of folds ``k``.
        fold_seed: seed the folds were drawn with.
        stratified: whether folds were stratified by class.
        all_cases: the case records (use :meth:`cases` for a split).
        fingerprint: dataset-level statistics (medians, pooled intensities, class balance).
        leakage: identical / near-identical image pairs found across folds.
        config: the indexing options used (for provenance).
        schema_version: version of this contract.
        path: where the index was loaded from (not serialised).
        label_remap: ``{source value: new value}`` applied to label maps as they are read (unlisted: 0); empty when
            the maps are used as they are. ``labels`` names the new values.
    """

    task: str
    source_kind: str
    root: str
    spatial_dims: int
    channel_names: list[str]
    labels: dict[str, int]
    class_names: list[str]
    num_folds: int
    fold_seed: int
    stratified: bool
    all_cases: list[CaseRecord]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    leakage: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    path: str | None = None
    label_remap: dict[int, int] = field(default_factory=dict)

    # ---- accessors a data module needs -------------------------------------------------------------------------
    @property
    def label_names(self) -> dict[int, str]:
        """Label value -> name (segmentation)."""
        return {int(v): k for k, v in self.labels.items()}

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.all_cases]

    def case(self, case_id: str) -> CaseRecord:
        """Return the record of ``case_id``.

        Raises:
            KeyError: no such case (the message lists a few valid ids).
        """
        for c in self.all_cases:
            if c.case_id == case_id:
                return c
        raise KeyError(f"case {case_id!r} is not in the index; ids look like {self.case_ids[:3]}")

    def cases(self, fold: int | None = None, split: str = "train") -> list[CaseRecord]:
        """Cases of one split: ``split="val"`` is fold ``fold``; ``"train"`` is every other fold.

        Args:
            fold: the validation fold; None returns all cases.
            split: "train" or "val".

        Raises:
            ValueError: ``fold`` out of range or unknown ``split``.
        """
        all_cases = self.all_cases
        if fold is None:
            return list(all_cases)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}.")
        if not 0 <= int(fold) < self.num_folds:
            raise ValueError(f"fold {fold} is out of range; this index has folds 0..{self.num_folds - 1}.")
        if split == "val":
            return [c for c in all_cases if c.fold == fold]
        return [c for c in all_cases if c.fold != fold]

    def resolve(self, rel: str) -> Path:
        """Absolute path of a file named in a record."""
        p = Path(rel)
        return p if p.is_absolute() else Path(self.root) / p

    def record(self, case: CaseRecord) -> dict[str, Any]:
        """A MONAI-style dictionary for one case: ``image``, ``label``, ``case_id``, ``group`` (+ archive keys).

        ``image`` is one absolute path (one channel) or a list of paths; for archive cases it is the archive path
        and ``archive_key``/``rows`` say which rows to read.
        """
        imgs = [str(self.resolve(p)) for p in case.image]
        d: dict[str, Any] = {"case_id": case.case_id, "group": case.group, "fold": case.fold}
        if case.archive is not None:
            d["image"] = str(self.resolve(case.archive.path))
            d["archive_key"] = case.archive.key
            d["rows"] = list(case.archive.rows)
        else:
            d["image"] = imgs[0] if len(imgs) == 1 else imgs
        if case.series_uid is not None:
            d["series_uid"] = case.series_uid
        if self.task == "segmentation" and case.label is not None:
            d["label"] = str(self.resolve(str(case.label)))
        elif case.label is not None:
            d["label"] = int(case.label)
        d.update({f"meta_{k}": v for k, v in case.metadata.items()})
        return d

    def records(self, fold: int | None = None, split: str = "train") -> list[dict[str, Any]]:
        """MONAI dictionaries for :meth:`cases` ``(fold, split)``."""
        return [self.record(c) for c in self.cases(fold, split)]

    def groups_by_fold(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for c in self.all_cases:
            out.setdefault(c.fold, set()).add(c.group)
        return out

    # ---- JSON ------------------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dictionary (field order as documented)."""
        out = {
            "format": FORMAT_NAME,
            "schema_version": self.schema_version,
            "task": self.task,
            "source_kind": self.source_kind,
            "root": self.root,
            "spatial_dims": self.spatial_dims,
            "channel_names": list(self.channel_names),
            "labels": dict(self.labels),
            "class_names": list(self.class_names),
            "num_folds": self.num_folds,
            "fold_seed": self.fold_seed,
            "stratified": self.stratified,
            "num_cases": len(self.all_cases),
            "fingerprint": copy.deepcopy(self.fingerprint),
            "leakage": copy.deepcopy(self.leakage),
            "config": copy.deepcopy(self.config),
            "cases": [c.to_json() for c in self.all_cases],
        }
        if self.label_remap:  # optional field: absent means the label maps are used as they are
            out = {k: v for k, v in out.items() if k != "cases"}
            out["label_remap"] = {str(k): int(v) for k, v in sorted(self.label_remap.items())}
            out["cases"] = [c.to_json() for c in self.all_cases]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], *, path: str | None = None) -> DatasetIndex:
        """Build from a parsed JSON dictionary.

        Raises:
            IndexValidationError: not a medeff index, a newer schema, or missing header fields.
        """
        where = path or "<dict>"
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise IndexValidationError(
                f"'{where}' is not a medeff dataset index (its 'format' field is not '{FORMAT_NAME}').",
                hint="create the index with `medeff index SOURCE OUT.json`.",
                path=path,
            )
        version = d.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise IndexValidationError(
                f"Index '{where}' has schema_version {version!r}; this medeff reads versions 1..{SCHEMA_VERSION}.",
                hint="re-create the index with this medeff version, or upgrade medeff.",
                path=path,
            )
        required = ["task", "root", "spatial_dims", "num_folds", "cases"]
        missing = [k for k in required if k not in d]
        if missing:
            raise IndexValidationError(
                f"Index '{where}' lacks the header field(s) {missing}.",
                hint="re-create the index with `medeff index`; do not edit it by hand.",
                path=path,
            )
        try:
            cases = [CaseRecord.from_json(c) for c in d["cases"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexValidationError(
                f"Index '{where}' has a malformed case record ({type(exc).__name__}: {exc}).",
                hint="re-create the index with `medeff index`; do not edit it by hand.",
                path=path,
            ) from exc
        return cls(
            task=str(d["task"]),
            source_kind=str(d.get("source_kind", "")),
            root=str(d["root"]),
            spatial_dims=int(d["spatial_dims"]),
            channel_names=[str(c) for c in d.get("channel_names", [])],
            labels={str(k): int(v) for k, v in (d.get("labels") or {}).items()},
            class_names=[str(c) for c in d.get("class_names", [])],
            num_folds=int(d["num_folds"]),
            fold_seed=int(d.get("fold_seed", 0)),
            stratified=bool(d.get("stratified", False)),
            all_cases=cases,
            fingerprint=dict(d.get("fingerprint") or {}),
            leakage=dict(d.get("leakage") or {}),
            config=dict(d.get("config") or {}),
            schema_version=version,
            path=path,
            label_remap={int(k): int(v) for k, v in (d.get("label_remap") or {}).items()},
        )
