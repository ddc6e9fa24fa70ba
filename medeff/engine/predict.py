"""``predict(cfg)``: run a trained checkpoint on new inputs, needing nothing but the checkpoint and the input.

* classification: ``predictions.csv`` and ``predictions.json`` with one row per case: class probabilities, the
  predicted class, the triage score (summed probability of the positive classes) and the decision at the
  threshold (``flag`` when score >= threshold, else ``routine``). Slices of one nodule (archive rows sharing a
  ``nodule_key`` or one index case) are averaged into one case.
* segmentation: Gaussian sliding-window inference, predictions mapped back through the inverse of the
  preprocessing, one ``<case>_seg.nii.gz`` per input whose affine equals the input's; joint models also write
  the classification table.

Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from medeff.config import check_values
from medeff.data.transforms import eval_transforms
from medeff.engine.case_errors import CaseFailures, check_finite
from medeff.engine.checkpoint import load_checkpoint
from medeff.engine.dicom_seg import check_output_formats, write_seg_outputs
from medeff.engine.inference import first_output, sliding_window
from medeff.engine.metrics import aggregate_by_case, class_probabilities
from medeff.errors import CheckpointError, ConfigError, InputError
from medeff.utils.atomic import atomic_path, write_json_atomic, write_text_atomic
from medeff.utils.logging import get_logger

__all__ = ["predict", "load_model", "load_models", "resolve_checkpoints", "classification_table", "list_inputs"]

log = get_logger(__name__)
NIFTI = (".nii.gz", ".nii")


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith(NIFTI)


def _case_name(p: Path) -> str:
    name = p.name
    for suf in NIFTI:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def load_model(ckpt_path: str | Path, *, device: str = "cpu", expect: dict[str, Any] | None = None,
               trusted_targets: list[str] | None = None):
    """Rebuild the network of a checkpoint from its stored config and load its weights.

    Returns:
        ``(net in eval mode, metadata)``.

    Raises:
        CheckpointError: unreadable, not medeff, not matching ``expect``, or its stored model config names a
            ``_target_`` that is not a network constructor of :func:`medeff.engine.targets.model_targets` nor
            one of the user's ``trusted_targets`` (nothing is built then).
    """
    from medeff.engine.targets import build_checked, model_targets

    meta, ckpt = load_checkpoint(ckpt_path, **{k: v for k, v in (expect or {}).items() if v is not None})
    model_cfg = (meta.get("config") or {}).get("model")
    if not isinstance(model_cfg, dict) or "_target_" not in model_cfg:
        raise CheckpointError(f"Checkpoint '{ckpt_path}' stores no model config (config.model._target_).",
                              hint="use a checkpoint written by `medeff train`.", path=str(ckpt_path))
    net = build_checked(model_cfg, model_targets().with_trusted(trusted_targets),
                        source=f"The model config stored in checkpoint '{ckpt_path}'", error=CheckpointError,
                        path=str(ckpt_path), hint="use a checkpoint written by `medeff train`; if its network "
                        "builder is your own, name it: medeff predict ... trusted_targets=[package.module.Name].")
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    return net.to(device).eval(), meta


def resolve_checkpoints(ckpt: Any) -> list[str]:
    """``ckpt`` -> checkpoint files: a file, a list of files, or a run folder (every ``checkpoints/last.ckpt`` under
    it, sorted, e.g. the ``fold*`` folders of a cross-validation).

    Raises:
        ConfigError: a folder without any ``checkpoints/last.ckpt``.
    """
    if isinstance(ckpt, (list, tuple)):
        return [str(p) for p in ckpt]
    p = Path(str(ckpt))
    if p.is_dir():
        found = sorted(str(f) for f in p.rglob("last.ckpt") if f.parent.name == "checkpoints")
        if not found:
            raise ConfigError(f"Run folder '{p}' holds no checkpoints/last.ckpt.",
                              hint="pass ckpt=FILE, ckpt=[A.ckpt,B.ckpt] or the folder of a finished run.")
        return found
    return [str(p)]


def load_models(ckpt: Any, *, device: str = "cpu", expect: dict[str, Any] | None = None, tta: str | None = None,
                trusted_targets: list[str] | None = None):
    """Load one checkpoint, or several (fold ensemble), optionally with flip test-time augmentation.

    Returns:
        ``(net, metadata of the first checkpoint, checkpoint paths)``; with several members or ``tta=flip`` the
        net is an :class:`medeff.engine.ensemble.AveragedNet` (logits of the mean probabilities).

    Raises:
        CheckpointError: a member is unusable or differs from the first in task, classes or labels.
    """
    from medeff.engine.checkpoint import check_compatible
    from medeff.engine.ensemble import AveragedNet, flip_views

    paths = resolve_checkpoints(ckpt)
    nets, metas = [], []
    for path in paths:
        net, meta = load_model(path, device=device, expect=expect, trusted_targets=trusted_targets)
        if metas:
            check_compatible(meta, path, task=metas[0]["task"], class_names=metas[0]["class_names"],
                             label_names=metas[0]["label_names"])
        nets.append(net)
        metas.append(meta)
    meta = metas[0]
    flips = flip_views(int(meta["data"]["spatial_dims"]), tta)
    if len(nets) == 1 and flips == [()]:
        return nets[0], meta, paths
    net = AveragedNet(nets, flips, joint=meta["task"] == "joint", spatial_output=meta["task"] != "classification")
    return net.eval(), meta, paths


def list_inputs(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """Turn ``input`` into records: ``("archive", items)`` or ``("volume", [{"image", "case_id"}, ...])``.

    Raises:
        InputError: the path is missing or holds nothing readable.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"Input '{path}' does not exist.", hint="pass input=FILE_OR_FOLDER.", path=str(path))
    if path.suffix == ".json":
        from medeff.data.datamodule import load_dataset_index

        index = load_dataset_index(path)
        recs = index.records(fold=None)
        if any("archive_key" in r for r in recs):
            return "archive", recs
        return "volume", [{"image": r["image"], "case_id": r["case_id"]} for r in recs]
    if path.suffix == ".npz":
        return "archive", _archive_records(path)
    if path.is_file():
        return "volume", [{"image": str(path), "case_id": _case_name(path)}]
    niftis = sorted(p for p in path.iterdir() if p.is_file() and _is_nifti(p))
    if niftis:
        return "volume", [{"image": str(p), "case_id": _case_name(p)} for p in niftis]
    return "volume", [{"image": str(path), "case_id": path.name}]  # a DICOM series folder


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


def classification_table(case_ids: Sequence[str], probs: np.ndarray, counts: Sequence[int], *,
                         class_names: Sequence[str], positive_classes: Sequence[int],
                         threshold: float) -> list[dict[str, Any]]:
    """One row per case: probabilities per class, predicted class, triage score and decision."""
    names = list(class_names) or [f"class{i}" for i in range(probs.shape[1])]
    rows = []
    for cid, p, n in zip(case_ids, probs, counts):
        k = int(np.argmax(p))
        score = float(sum(p[i] for i in positive_classes))
        row: dict[str, Any] = {"case_id": cid}
        row.update({f"p_{names[i]}": round(float(p[i]), 6) for i in range(len(p))})
        row.update({"predicted_class": names[k], "predicted_index": k, "score": round(score, 6),
                    "threshold": threshold, "decision": "flag" if score >= threshold else "routine",
                    "n_items": int(n)})
        rows.append(row)
    return rows


def _write_table(out_dir: Path, rows: list[dict[str, Any]], header: dict[str, Any], overwrite: bool) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(out_dir / "predictions.csv", buf.getvalue(), overwrite=overwrite)
    write_json_atomic(out_dir / "predictions.json", {**header, "cases": rows}, overwrite=overwrite)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@torch.no_grad()
def _classify(net, meta, kind: str, records, device: str, batch_size: int, failures: CaseFailures | None = None):
    data = meta["data"]
    common = dict(spatial_dims=int(data["spatial_dims"]), has_label=False, patch_size=data.get("patch_size"))
    probs, ids = [], []
    if kind == "archive":
        from medeff.data.datamodule import archive_items

        if data.get("kind") != "archive":
            raise InputError("This checkpoint classifies volumes (3D crops); the input is a 2D slice archive.",
                             hint="pass a NIfTI crop, a folder of crops or an index of volume cases.")
        tf = eval_transforms(data["preprocessing"], load=False, **common)
        items = archive_items(records, context_slices=int(data.get("context_slices", 0)))
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            x = torch.stack([torch.as_tensor(tf({"image": it["image"]})["image"]) for it in chunk]).float()
            probs.append(class_probabilities(first_output(net(x.to(device)))).cpu().numpy())
            ids += [it["case_id"] for it in chunk]
    else:
        if data.get("kind") == "archive":
            raise InputError("This checkpoint classifies 2D archive slices; the input is a volume.",
                             hint="pass a .npz slice archive or an index of archive cases.")
        tf = eval_transforms(data["preprocessing"], load=True, **common)
        failures = failures if failures is not None else CaseFailures("stop")
        for rec in records:
            with failures.case(rec):
                x = check_finite(torch.as_tensor(tf({"image": rec["image"]})["image"])[None].float(),
                                 f"The preprocessed image of case '{rec['case_id']}'")
                p = class_probabilities(first_output(net(x.to(device))))
                probs.append(check_finite(p, f"The network output for case '{rec['case_id']}'").cpu().numpy())
                ids.append(rec["case_id"])
        if not probs:  # every case failed: the caller reports them
            return [], None, None, []
    return aggregate_by_case(np.concatenate(probs), ids)


@torch.no_grad()
def _segment(net, meta, records, out_dir: Path, device: str, sw_cfg: dict[str, Any], overwrite: bool,
             failures: CaseFailures | None = None):
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    data, tcfg = meta["data"], meta["config"]["task"]
    joint = meta["task"] == "joint"
    pre = eval_transforms(data["preprocessing"], spatial_dims=3, has_label=False, patch_size=data.get("patch_size"),
                          load=True, track_meta=True)
    inverter = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True)
    sw = {"sw_batch_size": int(sw_cfg.get("sw_batch_size") or tcfg.get("sw_batch_size", 2)),
          "overlap": float(sw_cfg.get("overlap") if sw_cfg.get("overlap") is not None else tcfg.get("overlap", 0.5)),
          "mode": str(sw_cfg.get("mode") or tcfg.get("sw_mode", "gaussian"))}
    failures = failures if failures is not None else CaseFailures("stop")
    masks, class_probs, ids = [], [], []
    for rec in records:
        with failures.case(rec):
            d = pre({"image": rec["image"]})
            affine = np.asarray(d["image"].meta["original_affine"], dtype=np.float64)  # the input's own geometry
            in_shape = tuple(int(n) for n in d["image"].meta["spatial_shape"])
            x = check_finite(d["image"][None], f"The preprocessed image of case '{rec['case_id']}'").to(device)
            out = sliding_window(net, x.as_tensor() if isinstance(x, MetaTensor) else x, roi_size=tcfg["roi_size"],
                                 joint=joint, **sw)
            seg, cls = out if joint else (out, None)
            check_finite(seg, f"The network output for case '{rec['case_id']}'")
            label = seg.argmax(dim=1).to(torch.int16).cpu()
            img_meta = {k: v for k, v in d["image"].meta.items() if k != "affine"}
            d["pred"] = MetaTensor(label, affine=d["image"].affine, meta=img_meta,
                                   applied_operations=list(d["image"].applied_operations))
            mask = np.asarray(inverter(d)["pred"])[0]
            if mask.shape != in_shape:
                raise RuntimeError(f"inverted mask shape {mask.shape} differs from the input {in_shape}")
            img = nib.Nifti1Image(mask.astype(np.uint8 if mask.max() < 256 else np.int16), affine)
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            out_path = out_dir / f"{rec['case_id']}_seg.nii.gz"
            with atomic_path(out_path, overwrite=overwrite) as tmp:
                nib.save(img, str(tmp))
            log.info("Wrote %s", out_path)
            masks.append({"case_id": rec["case_id"], "mask": str(out_path),
                          "voxels_per_label": {n: int((mask == i).sum()) for i, n in enumerate(meta["label_names"])}})
            ids.append(rec["case_id"])
            if cls is not None:
                class_probs.append(class_probabilities(cls).cpu().numpy())
    return masks, ids, (np.concatenate(class_probs) if class_probs else None)


def predict(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Run a checkpoint on ``cfg.input`` and write predictions under ``cfg.output_dir``.

    Args:
        cfg: a composed ``predict`` config (``ckpt``, ``input``, ``output_dir``, ``threshold``, ``device``,
            ``batch_size``, ``sliding_window``, ``expect``, ``overwrite``, ``on_error``).

    Returns:
        ``{"task", "output_dir", "cases": [...rows or mask entries...], "files": [...], "failed": [...]}``;
        ``failed`` lists ``{"case_id", "image", "reason"}`` of the cases skipped with ``on_error=skip`` (also in
        ``predictions.json`` and ``failed_cases.csv``).

    Raises:
        ConfigError: ``ckpt`` or ``input`` not set.
        CheckpointError: the checkpoint is unusable or not the expected one.
        InputError: the input cannot be read, a case failed with ``on_error=stop``, or every case failed.
    """
    check_values("predict", cfg)  # threshold in [0, 1], batch_size >= 1: before loading anything
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for key in ("ckpt", "input"):
        if c.get(key) in (None, "", "???"):
            raise ConfigError(f"predict needs '{key}'.", hint=f"pass {key}=PATH.")
    device = _device(str(c.get("device", "auto")))
    failures = CaseFailures(str(c.get("on_error") or "skip"))
    net, meta, ckpts = load_models(c["ckpt"], device=device, expect=c.get("expect"), tta=c.get("tta"),
                                   trusted_targets=c.get("trusted_targets"))
    formats = check_output_formats(c.get("output_format"), meta["task"])  # before any inference
    out_dir = Path(c.get("output_dir") or "predictions")
    overwrite = bool(c.get("overwrite", False))
    threshold = float(c["threshold"] if c.get("threshold") is not None else (meta.get("threshold") or 0.5))
    header = {"checkpoint": ckpts[0] if len(ckpts) == 1 else ckpts, "tta": c.get("tta") or "none",
              "task": meta["task"], "class_names": meta["class_names"],
              "positive_classes": meta["positive_classes"], "threshold": threshold,
              "versions": meta.get("versions", {})}
    kind, records = list_inputs(c["input"])
    log.info("Predicting %d case(s) with a %s checkpoint on %s", len(records), meta["task"], device)
    result: dict[str, Any] = {"task": meta["task"], "output_dir": str(out_dir), "files": []}
    if meta["task"] == "classification":
        ids, probs, _, counts = _classify(net, meta, kind, records, device, int(c.get("batch_size", 16)), failures)
        failures.raise_if_all_failed(len(records), out_dir, overwrite)
        header["failed"] = failures.failed
        rows = classification_table(ids, probs, counts, class_names=meta["class_names"],
                                    positive_classes=meta["positive_classes"] or [probs.shape[1] - 1],
                                    threshold=threshold)
        _write_table(out_dir, rows, header, overwrite)
        result.update(cases=rows, files=[str(out_dir / "predictions.csv"), str(out_dir / "predictions.json")])
        return _report_failures(result, failures, out_dir, overwrite, len(records))
    if kind != "volume":
        raise InputError(f"A {meta['task']} checkpoint needs volumes; '{c['input']}' is a slice archive.",
                         hint="pass a NIfTI file, a DICOM folder or a folder of NIfTI files.")
    masks, ids, cls_probs = _segment(net, meta, records, out_dir, device, c.get("sliding_window") or {}, overwrite,
                                     failures)
    failures.raise_if_all_failed(len(records), out_dir, overwrite)
    header["failed"] = failures.failed
    result.update(cases=masks, files=[m["mask"] for m in masks])
    if "dicom_seg" in formats:
        result["files"] += write_seg_outputs(masks, records, out_dir, meta["label_names"], c.get("dicom_seg"),
                                             overwrite)
    if cls_probs is not None:
        rows = classification_table(ids, cls_probs, [1] * len(ids), class_names=meta["class_names"],
                                    positive_classes=meta["positive_classes"] or [cls_probs.shape[1] - 1],
                                    threshold=threshold)
        for row, m in zip(rows, masks):
            row["mask"] = m["mask"]
        _write_table(out_dir, rows, header, overwrite)
        result["classification"] = rows
        result["files"] += [str(out_dir / "predictions.csv"), str(out_dir / "predictions.json")]
    else:
        write_json_atomic(out_dir / "predictions.json", {**header, "cases": masks}, overwrite=overwrite)
        result["files"].append(str(out_dir / "predictions.json"))
    return _report_failures(result, failures, out_dir, overwrite, len(records))


def _report_failures(result: dict[str, Any], failures: CaseFailures, out_dir: Path, overwrite: bool,
                     n_cases: int) -> dict[str, Any]:
    result["failed"] = failures.failed
    written = failures.write(out_dir, overwrite)
    if written is not None:
        result["files"].append(str(written))
        log.warning("%d of %d case(s) failed and were skipped; see %s", len(failures), n_cases, written)
    return result
