"""``medeff split INDEX OUT_DIR``: a train/val/test split of an index, written as files the other commands read.

Protocols: ``grouped`` keeps each of the index's groups (patients, or near-duplicate groups when the index was
built with ``groups.near_duplicates=true``) on one side; ``random`` splits image by image, as many published
results do. Both are stratified by class. Written atomically into OUT_DIR:

* ``splits.csv``: case_id, file, label, class_name, group, split, protocol;
* ``train.json``: an index of the training and validation cases (fold 0 = validation, fold 1 = training), for
  ``medeff train data.index=OUT_DIR/train.json data.fold=0`` (``random``: every image its own group there, as the
  protocol treats it; ``splits.csv`` keeps the index's groups);
* ``test.json``: an index of the test cases, for ``medeff predict input=OUT_DIR/test.json``;
* ``split_leakage.json``: test cases with an identical or near-identical training case, by the leakage guard's
  test with the settings the index was built with (see :func:`medeff.data.splits.split_leakage`).
"""

from __future__ import annotations

import copy
import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medeff.data.index_types import DatasetIndex
from medeff.errors import ConfigError
from medeff.utils.atomic import check_writable, write_json_atomic, write_text_atomic
from medeff.utils.logging import get_logger

__all__ = ["split_config", "build_split", "PROTOCOLS"]

log = get_logger(__name__)

PROTOCOLS = ("grouped", "random")


def split_config(overrides: Sequence[str] = ()) -> Any:
    """Compose ``conf/split.yaml`` with Hydra ``key=value`` overrides."""
    from medeff.config import compose

    return compose("split", overrides)


def _sub_index(index: DatasetIndex, cases: list, folds: list[int], num_folds: int, *,
               own_groups: bool = False) -> DatasetIndex:
    """An index of ``cases`` with new folds; ``own_groups``: every case its own group (image-level split)."""
    sub = copy.deepcopy(index)
    sub.all_cases = [copy.deepcopy(c) for c in cases]
    for c, f in zip(sub.all_cases, folds):
        c.fold = int(f)
        if own_groups:
            c.group = f"image_{c.case_id}"
    sub.num_folds = num_folds
    sub.leakage = {}
    sub.path = None
    return sub


def _thumbnails(index: DatasetIndex) -> tuple[list[str], list, list]:
    """Hash, candidate and confirming thumbnail per case, with the leakage settings the index was built with."""
    from medeff.data.index_validation import inspect_case
    from medeff.data.leakage import array_hash, confirm_size, thumbnail

    lk = dict((index.config or {}).get("leakage") or {})
    size, voxels = int(lk.get("thumbnail_size", 16)), int(lk.get("confirm_voxels", 32768))
    hashes, thumbs, fine = [], [], []
    for rec in index.all_cases:
        ins = inspect_case(index, rec, load=True)
        if ins.image is None:
            hashes.append(f"missing:{rec.case_id}")
            thumbs.append(None)
            fine.append(None)
            continue
        img = ins.image[len(ins.image) // 2] if rec.archive is not None else ins.image
        hashes.append(rec.fingerprint.get("image_sha1") or array_hash(ins.image))
        thumbs.append(thumbnail(img, size))
        fine.append(thumbnail(img, confirm_size(img.ndim, voxels)))
    return hashes, thumbs, fine


def build_split(index_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: Any = None) -> dict[str, Any]:
    """Split the index at ``index_path`` by ``cfg.protocol`` and write the files listed in the module docstring.

    Returns:
        A summary: protocol, counts per split (and per class), number of groups, the leakage measured.

    Raises:
        ConfigError: an unknown protocol, bad fractions, or an index without classes.
        IndexValidationError: the index cannot be read.
        OutputExistsError: an output exists and ``overwrite`` is false.
    """
    from omegaconf import OmegaConf

    from medeff.data.index_validation import load_index
    from medeff.data.splits import grouped_split, random_split, split_leakage
    from medeff.utils.options import look_up

    cfg = split_config() if cfg is None else cfg
    protocol = look_up(str(cfg.protocol), PROTOCOLS, what="split protocol", key="protocol")
    fractions = OmegaConf.to_container(cfg.fractions) if hasattr(cfg.fractions, "keys") else dict(cfg.fractions)
    out = Path(out_dir)
    names = ("splits.csv", "train.json", "test.json", "split_leakage.json")
    for n in names:
        check_writable(out / n, overwrite=bool(cfg.overwrite))
    index = load_index(index_path)
    if index.task != "classification":
        raise ConfigError(f"`medeff split` stratifies by class, but index '{index_path}' is {index.task}.",
                          hint="split a classification index (cross-validation folds serve other tasks).")
    classes = [int(c.label) for c in index.all_cases]
    groups = [c.group for c in index.all_cases]
    if protocol == "grouped":
        sides = grouped_split(groups, classes, fractions, seed=int(cfg.seed), stratify=bool(cfg.stratify))
    else:
        sides = random_split(classes, fractions, seed=int(cfg.seed), stratify=bool(cfg.stratify))
    log.info("Measuring near-duplicates between test and training cases (%d images).", len(sides))
    hashes, thumbs, fine = _thumbnails(index)
    lk = dict((index.config or {}).get("leakage") or {})
    leak = split_leakage(sides, hashes, thumbs, fine, threshold=float(lk.get("near_threshold", 0.98)),
                         max_examples=int(cfg.leakage_examples))
    files = [c.image[0] if c.image else c.case_id for c in index.all_cases]
    leak["examples"] = [{"test": files[t], "train": files[o], "r": r} for t, o, r in leak["examples"]]
    leak["protocol"] = protocol
    leak["settings"] = {k: lk.get(k) for k in ("thumbnail_size", "confirm_voxels", "near_threshold")}

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "file", "label", "class_name", "group", "split", "protocol"])
    for c, f, s in zip(index.all_cases, files, sides):
        w.writerow([c.case_id, f, int(c.label), index.class_names[int(c.label)], c.group, s, protocol])
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "splits.csv", buf.getvalue(), overwrite=bool(cfg.overwrite))
    trainval = [(c, 0 if s == "val" else 1) for c, s in zip(index.all_cases, sides) if s in ("train", "val")]
    test = [c for c, s in zip(index.all_cases, sides) if s == "test"]
    # the random protocol ignores the index's groups: its sub-indexes say so (each image its own group), while
    # splits.csv keeps the index's groups (for cluster-bootstrap intervals and leakage reports)
    train_idx = _sub_index(index, [c for c, _ in trainval], [f for _, f in trainval], 2,
                           own_groups=protocol == "random")
    write_json_atomic(out / "train.json", train_idx.to_json(), overwrite=bool(cfg.overwrite))
    test_idx = _sub_index(index, test, [0] * len(test), 1, own_groups=protocol == "random")
    write_json_atomic(out / "test.json", test_idx.to_json(), overwrite=bool(cfg.overwrite))
    counts = {s: {index.class_names[k]: sum(1 for c, x in zip(classes, sides) if x == s and c == k)
                  for k in range(len(index.class_names))} for s in ("train", "val", "test")}
    sides_of: dict[str, set[str]] = {}
    for g, s in zip(groups, sides):
        sides_of.setdefault(g, set()).add(s)
    summary = {"protocol": protocol, "seed": int(cfg.seed), "fractions": fractions, "counts": counts,
               "n_index_groups": len(sides_of),
               "n_index_groups_on_two_sides": sum(1 for v in sides_of.values() if len(v) > 1),
               "leakage": leak}
    write_json_atomic(out / "split_leakage.json", summary, overwrite=bool(cfg.overwrite))
    log.info("%s split: %s; %d of %d test image(s) (%.1f%%) have a near-duplicate in training.", protocol,
             {s: sum(v.values()) for s, v in counts.items()}, leak["n_leaked"], leak["n_test"],
             100.0 * leak["fraction_leaked"])
    return summary
