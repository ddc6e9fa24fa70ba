"""Build a dataset index: scan a source, pseudonymise, validate every case, fingerprint, draw folds, write JSON.

``build_index(source, out, cfg)`` is what ``medeff index SOURCE OUT.json [key=value ...]`` runs. All problems of all
cases are collected and raised together as one :class:`medeff.errors.IndexValidationError`; nothing is written
then. The index is written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medeff import __version__
from medeff.data.fingerprint import case_fingerprint, dataset_fingerprint
from medeff.data.folds import assign_folds, split_groups
from medeff.data.index_sources import RawCase, Scan, detect_kind, scan_source
from medeff.data.index_types import CaseRecord, DatasetIndex
from medeff.data.index_validation import (
    UNKNOWN_LABELS_FIX,
    Problem,
    inspect_case,
    raise_problems,
    unknown_labels_problem,
)
from medeff.data.leakage import array_hash, confirm_size, find_leaks, thumbnail
from medeff.data.pseudonyms import case_ids, check_mapping_path, write_mapping
from medeff.errors import ConfigError
from medeff.utils.atomic import check_writable, write_json_atomic
from medeff.utils.logging import get_logger
from medeff.utils.progress import track
from medeff.utils.pseudonyms import Pseudonymiser

__all__ = ["build_index", "index_config"]

log = get_logger(__name__)


def index_config(overrides: Sequence[str] = ()) -> Any:
    """Compose ``conf/index.yaml`` with Hydra ``key=value`` overrides."""
    from medeff.config import compose

    return compose("index", overrides)


def _to_cfg(cfg: Any) -> Any:
    from omegaconf import DictConfig, OmegaConf

    if cfg is None:
        return index_config()
    if isinstance(cfg, DictConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return OmegaConf.merge(index_config(), OmegaConf.create(dict(cfg)))
    raise TypeError(f"cfg must be a DictConfig, a mapping or None, got {type(cfg).__name__}")


def _label_names(cfg: Any, found: set[int], remap: dict[int, int] | None = None) -> dict[str, int]:
    """Label name -> value: from ``labels``, else ``labels_file`` (JSON id -> name), else derived.

    With a ``label_remap``, ``found`` holds new values; a new value fed by one source value takes that source's name
    from ``labels_file``.
    """
    from omegaconf import OmegaConf

    labels = OmegaConf.to_container(cfg.labels) if cfg.get("labels") else {}
    if not labels and cfg.get("labels_file") and remap:
        data = _labels_file(cfg)
        sources: dict[int, list[int]] = {}
        for s, d in remap.items():
            sources.setdefault(d, []).append(s)
        labels = {str(data[str(src[0])]) if len(src) == 1 and str(src[0]) in data else f"label_{d}": d
                  for d, src in sorted(sources.items()) if d in found and d != 0}
    if not labels and cfg.get("labels_file"):
        data = _labels_file(cfg)
        labels = {str(name): int(i) for i, name in data.items() if int(i) in found}
    if not labels:
        labels = {f"label_{v}": v for v in sorted(found) if v != 0}
    out = {"background": 0}
    out.update({str(k): int(v) for k, v in labels.items() if int(v) != 0})
    return out


def _labels_file(cfg: Any) -> dict[str, Any]:
    path = Path(str(cfg.labels_file))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"labels_file '{path}' cannot be read as JSON ({exc}).",
                          hint="give a JSON object mapping label id -> name.") from exc
    if cfg.get("labels_file_key"):
        data = data[str(cfg.labels_file_key)]
    return data


def _path_identifier_problems(cases: Sequence[RawCase], ids: Sequence[str]) -> list[Problem]:
    """Cases whose file paths contain their own patient identifier (the value itself is never shown)."""
    out = []
    for c, cid in zip(cases, ids):
        paths = list(c.image) + ([c.label] if isinstance(c.label, str) else [])
        for ident in c.identifiers:
            if len(ident) >= 3 and any(ident in p for p in paths):
                out.append(Problem(cid, "-", "a file or folder name contains the patient identifier",
                                   "rename the folders/files to pseudonyms, or set "
                                   "pseudonym.forbid_identifiers_in_paths=false if the id is already a pseudonym"))
                break
    return out


def _similarity_group_keys(raw: Sequence[RawCase], hashes: Sequence[str], thumbs: Sequence[Any],
                           fine: Sequence[Any], classes: Sequence[int] | None,
                           cfg: Any) -> tuple[list[str], dict[str, Any]]:
    """Group keys joining identical and near-identical images (the leakage guard's test) with the source groups."""
    from medeff.data.grouping import group_summary, similarity_groups

    if not bool(cfg.leakage.enabled):
        raise ConfigError("groups.near_duplicates=true needs the leakage guard's thumbnails, but leakage.enabled "
                          "is false.", hint="set leakage.enabled=true (or groups.near_duplicates=false).")
    labels = similarity_groups(hashes, thumbs, fine, threshold=float(cfg.leakage.near_threshold),
                               source_groups=[c.group_key for c in raw])
    # a group is named after its first member's source group (in memory only; pseudonymised before writing)
    name: dict[int, str] = {}
    for c, g in zip(raw, labels):
        name.setdefault(g, f"similar:{c.group_key}")
    summary = group_summary(labels, classes)
    summary.update({"near_duplicates": True, "threshold": float(cfg.leakage.near_threshold),
                    "thumbnail_size": int(cfg.leakage.thumbnail_size),
                    "confirm_voxels": int(cfg.leakage.confirm_voxels)})
    log.info("Near-duplicate grouping: %d case(s) in %d group(s) (largest %d, %d single).", summary["n_cases"],
             summary["n_groups"], summary["largest"], summary["n_singletons"])
    return [name[g] for g in labels], summary


def build_index(source: str | os.PathLike, out: str | os.PathLike, cfg: Any = None,
                *, overrides: Sequence[str] = ()) -> DatasetIndex:
    """Scan ``source``, validate and fingerprint every case, draw folds and write the index to ``out``.

    Args:
        source: a DICOM folder, a NIfTI folder, a CSV manifest or an ``.npz`` archive (or its folder).
        out: the index JSON to write.
        cfg: the composed ``index`` config (DictConfig), a mapping merged over the defaults, or None.
        overrides: Hydra overrides applied when ``cfg`` is None.

    Returns:
        The index that was written.

    Raises:
        IndexValidationError: any invalid case (all listed); nothing is written.
        ConfigError: a bad option.
        InputError: the source cannot be read.
    """
    cfg = index_config(overrides) if cfg is None and overrides else _to_cfg(cfg)
    source = Path(source).expanduser().absolute()
    out = Path(out).expanduser()
    check_writable(out, overwrite=bool(cfg.overwrite))
    if cfg.pseudonym.get("mapping_out"):
        check_mapping_path(str(cfg.pseudonym.mapping_out), out)
    kind = str(cfg.source.kind)
    if kind == "auto":
        kind = detect_kind(source, cfg)
    scan: Scan = scan_source(source, kind, cfg)
    task = scan.task if str(cfg.task_kind) == "auto" else str(cfg.task_kind)
    if task not in (scan.task, "unlabelled"):
        raise ConfigError(f"task_kind={cfg.task_kind} but the source gives {scan.task} cases.",
                          hint="use task_kind=auto, or point the label column/naming rule at the right files.")
    log.info("Indexing %s source: %d case(s), task %s.", kind, len(scan.cases), task)

    # deterministic order: by original group, then source reference (original values stay in memory)
    order = sorted(range(len(scan.cases)), key=lambda i: (scan.cases[i].group_key, scan.cases[i].source_ref))
    raw = [scan.cases[i] for i in order]
    pc = cfg.pseudonym
    ids = case_ids(len(raw), prefix=str(pc.case_prefix))
    ref_to_id = {c.source_ref: cid for c, cid in zip(raw, ids)}
    pseudo = Pseudonymiser(None if pc.salt is None else str(pc.salt), prefix=str(pc.group_prefix))
    group_of = pseudo.map(c.group_key for c in raw)
    problems = [Problem(ref_to_id.get(ref, ref), file, prob, fix) for ref, file, prob, fix in scan.problems]
    if bool(pc.forbid_identifiers_in_paths):
        problems += _path_identifier_problems(raw, ids)

    records = [
        CaseRecord(case_id=cid, image=list(c.image), label=c.label if task != "unlabelled" else None,
                   group=group_of[c.group_key], fold=0, archive=c.archive, series_uid=c.series_uid,
                   metadata=dict(c.metadata))
        for c, cid in zip(raw, ids)
    ]
    spatial_dims = int(cfg.spatial_dims) if cfg.get("spatial_dims") else scan.spatial_dims
    index = DatasetIndex(task=task, source_kind=kind, root=str(scan.root), spatial_dims=spatial_dims,
                         channel_names=scan.channel_names, labels={}, class_names=list(scan.class_names),
                         num_folds=int(cfg.folds.k), fold_seed=int(cfg.folds.seed),
                         stratified=bool(cfg.folds.stratify) and task == "classification", all_cases=records)
    if cfg.get("label_remap"):
        from omegaconf import OmegaConf

        from medeff.data.label_remap import parse_label_remap

        if task != "segmentation":
            raise ConfigError(f"label_remap is set but the source gives {task} cases.",
                              hint="label_remap applies to segmentation label maps; remove it.")
        index.label_remap = parse_label_remap(OmegaConf.to_container(cfg.label_remap), "label_remap")
    if kind != "archive" and not cfg.get("spatial_dims") and records:
        # the first readable header decides 2D vs 3D (DICOM series are 3D)
        for r in records:
            hdr = inspect_case(index, r).header
            if hdr is not None:
                index.spatial_dims = hdr.ndim
                break

    atol = float(cfg.validation.geometry_atol)
    lk = cfg.leakage
    samples, hashes, thumbs, fine, found_labels = [], [], [], [], set()
    found_by_case: list[tuple[str, str, set[int]]] = []  # (case id, label map, values) for naming unknown values
    for rec in track(records, "Indexing cases"):
        ins = inspect_case(index, rec, check_voxels=True, load=True, atol=atol)
        problems += ins.problems
        if ins.problems or ins.image is None:
            samples.append(np.zeros(0))
            hashes.append(f"missing:{rec.case_id}")
            thumbs.append(None)
            fine.append(None)
            continue
        hdr = ins.header
        if ins.label is not None:
            values = {int(v) for v in np.unique(ins.label)}
            found_labels.update(values)
            found_by_case.append((rec.case_id, str(rec.label), values))
        fp, sample = case_fingerprint(
            ins.image, ins.label, shape=hdr.shape, spacing=hdr.spacing, orientation=hdr.orientation,
            dtype=hdr.dtype or str(ins.image.dtype),
            class_index=rec.label if task == "classification" else None,
            sample=int(cfg.fingerprint.samples_per_case), seed=int(cfg.folds.seed),
        )
        fp["image_sha1"] = array_hash(ins.image)
        if ins.label_reoriented:
            fp["label_reoriented"] = True
        rec.fingerprint = fp
        samples.append(sample)
        hashes.append(fp["image_sha1"])
        if bool(lk.enabled):
            thumb_src = ins.image[len(ins.image) // 2] if rec.archive is not None else ins.image
            thumbs.append(thumbnail(thumb_src, int(lk.thumbnail_size)))
            fine.append(thumbnail(thumb_src, confirm_size(thumb_src.ndim, int(lk.confirm_voxels))))
        else:
            thumbs.append(None)
            fine.append(None)
    if task == "segmentation":
        index.labels = _label_names(cfg, found_labels, index.label_remap)
        declared = set(index.labels.values())
        for cid, label_map, values in found_by_case:  # every label map with a value the declared labels lack
            unknown = sorted(values - declared)
            if unknown:
                problems.append(Problem(cid, label_map, unknown_labels_problem(unknown, index.labels),
                                        UNKNOWN_LABELS_FIX))
    raise_problems(problems, f"Source '{source}'", str(source))

    classes = [int(r.label) for r in records] if task == "classification" else None
    group_keys = [c.group_key for c in raw]
    grouping: dict[str, Any] = {}
    if bool(cfg.groups.near_duplicates):
        group_keys, grouping = _similarity_group_keys(raw, hashes, thumbs, fine, classes, cfg)
        group_of = pseudo.map(group_keys)
        for r, g in zip(records, group_keys):
            r.group = group_of[g]
    # folds are drawn on the original group keys (in memory only) so they do not depend on the pseudonym salt
    folds = assign_folds(group_keys, classes, k=index.num_folds, seed=index.fold_seed,
                         stratify=index.stratified)
    if raw and all(c.fold is not None for c in raw):  # folds fixed by the source (csv.fold_col)
        folds = [int(c.fold) for c in raw]
        bad = [cid for cid, f in zip(ids, folds) if not 0 <= f < index.num_folds]
        split = split_groups([r.group for r in records], folds)
        if bad or split:
            raise_problems([Problem(cid, "-", f"fold is outside 0..{index.num_folds - 1}", "fix the fold column or "
                                    "folds.k") for cid in bad]
                           + [Problem(g, "-", f"patient group is split across the fixed folds {sorted(fs)}",
                                      "give all rows of a patient one fold") for g, fs in split.items()],
                           f"Source '{source}'", str(source))
    for r, f in zip(records, folds):
        r.fold = int(f)
    assert not split_groups([r.group for r in records], folds), "fold assignment split a patient group"
    index.leakage = find_leaks(ids, folds, hashes, thumbs, fine, threshold=float(lk.near_threshold),
                               max_pairs=int(lk.max_pairs)) if bool(lk.enabled) else {}
    if grouping:
        index.leakage["groups"] = grouping
    index.fingerprint = dataset_fingerprint([r.fingerprint for r in records], samples,
                                            groups=[r.group for r in records], class_names=index.class_names)
    from omegaconf import OmegaConf

    conf = OmegaConf.to_container(cfg, resolve=True)
    conf.get("pseudonym", {}).pop("salt", None)  # never store the secret
    conf.get("pseudonym", {}).pop("mapping_out", None)
    conf["medeff_version"] = __version__
    conf["created_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    index.config = conf
    if index.leakage.get("n_identical") or index.leakage.get("n_near_identical"):
        log.warning("Leakage guard: %d identical and %d near-identical image pair(s) lie in different folds "
                    "(listed under 'leakage' in %s).", index.leakage["n_identical"],
                    index.leakage["n_near_identical"], out)
    write_json_atomic(out, index.to_json(), overwrite=bool(cfg.overwrite))
    index.path = str(out)
    if pc.get("mapping_out"):
        rows = [("case", cid, c.source_ref) for c, cid in zip(raw, ids)]
        rows += [("group", p, g) for g, p in group_of.items()]
        write_mapping(str(pc.mapping_out), rows, index_path=out)
        log.info("Wrote the pseudonym mapping (keep it private).")
    log.info("Wrote %s: %d case(s), %d group(s), %d folds.", out, len(records), len(group_of), index.num_folds)
    return index
