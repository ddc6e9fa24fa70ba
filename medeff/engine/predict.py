"""``predict(cfg)``: run a trained checkpoint on new inputs, needing nothing but the checkpoint and the input.

* classification: ``predictions.csv`` and ``predictions.json`` with one row per case: class probabilities, the
  predicted class, the triage score (summed probability of the positive classes) and the decision at the
  threshold (``flag`` when score >= threshold, else ``routine``). Slices of one nodule (archive rows sharing a
  ``nodule_key`` or one index case) are averaged into one case.
* segmentation (:mod:`medeff.engine.predict_segment`): Gaussian sliding-window inference, class probabilities (or
  labels, ``resample``) mapped back through the inverse of the preprocessing, the post-processing plan beside the
  model applied (:mod:`medeff.engine.predict_postprocess`), one ``<case>_seg.nii.gz`` per input whose affine equals
  the input's (plus probability maps on request); the next case is read in a loader worker meanwhile
  (:mod:`medeff.engine.predict_loader`); joint models also write the classification table.

Cases and their ids: :mod:`medeff.engine.predict_inputs` (inputs named after a patient give pseudonyms). The output
folder, resumed reruns and stale outputs: :mod:`medeff.engine.predict_outputs`. Every file is written atomically;
a case whose raw voxels or network output are not finite fails (``failed_cases.csv``), it never gets an output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from medeff.config import check_values
from medeff.data.transforms import eval_transforms
from medeff.engine.case_errors import CaseFailures, check_finite
from medeff.engine.checkpoint import load_checkpoint
from medeff.engine.dicom_seg import check_output_formats, organ_code_table, write_seg_outputs
from medeff.engine.inference import first_output, inference_context
from medeff.engine.metrics import class_probabilities
from medeff.engine.predict_inputs import (CaseNaming, check_duplicates, check_output_dir, discover, fingerprint,
                                          json_bytes, list_inputs)
from medeff.engine.predict_loader import case_loader, resolve_predict_workers
from medeff.engine.predict_outputs import RunManifest, finish_run
from medeff.engine.predict_postprocess import plan_for_predict
from medeff.engine.predict_resample import check_memory_mb, check_resample_mode
from medeff.engine.predict_segment import Segmenter, probability_map_names, raw_load
from medeff.errors import CheckpointError, ConfigError, InputError, OutputExistsError, OutputWriteError
from medeff.utils.logging import get_logger
from medeff.utils.progress import track

__all__ = ["predict", "load_model", "load_models", "resolve_checkpoints", "classification_table", "list_inputs",
           "probability_map_names"]

log = get_logger(__name__)


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
    # the checkpoint holds the trained weights (and their convention): never fetch pretrained ones again
    model_cfg = {**model_cfg, **{k: v for k, v in (("pretrained", False), ("weights", None)) if k in model_cfg}}
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


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _settings_digest(c: dict[str, Any], ckpts: Sequence[str], threshold: float, formats: Sequence[str],
                     naming: CaseNaming) -> str:
    """Digest of what besides the input changes a case's outputs (checkpoint bytes, TTA, windows, formats, ...)."""
    h = hashlib.sha256()
    for path in ckpts:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    keys = ("tta", "sliding_window", "expect", "dicom_seg", "resample", "postprocess_plan_sha256", "probability_maps")
    h.update(json_bytes({**{k: c.get(k) for k in keys}, "threshold": threshold, "formats": sorted(formats),
                         "naming": naming.settings()}))
    return h.hexdigest()


@torch.no_grad()
def _classify(net, meta, kind: str, todo: list, device: str, batch_size: int, workers: int, failures: CaseFailures,
              done: Callable[[dict[str, Any], str, np.ndarray, int], None],
              failed: Callable[[dict[str, Any], str], None]) -> None:
    """Classify every ``(record, fingerprint)`` of ``todo``; ``done(rec, fp, mean probabilities, n_items)`` per
    predicted case, ``failed(rec, fp)`` per failed one. Archive cases are batched (whole cases, up to
    ``batch_size`` slices per forward pass); volumes are read ahead by ``workers`` loader processes; one case's
    failure never touches the others."""
    data = meta["data"]
    common = dict(spatial_dims=int(data["spatial_dims"]), has_label=False, patch_size=data.get("patch_size"))
    if kind == "archive":
        from medeff.data.datamodule import archive_items

        if data.get("kind") != "archive":
            raise InputError("This checkpoint classifies volumes (3D crops); the input is a 2D slice archive.",
                             hint="pass a NIfTI crop, a folder of crops or an index of volume cases.")
        tf = eval_transforms(data["preprocessing"], load=False, **common)
        pending: list[tuple[dict[str, Any], str, list[torch.Tensor]]] = []

        def flush() -> None:
            if not pending:
                return
            batch = list(pending)
            pending.clear()
            try:
                x = torch.stack([t for _, _, xs in batch for t in xs]).float()
                with inference_context(device):
                    logits = first_output(net(x.to(device)))
                probs = class_probabilities(logits.float()).cpu()
            except Exception as exc:  # the batch's cases fail together; other batches go on
                for rec, fp, _ in batch:
                    with failures.case(rec):
                        raise exc
                    failed(rec, fp)
                return
            start = 0
            for rec, fp, xs in batch:
                p = probs[start:start + len(xs)]
                start += len(xs)
                with failures.case(rec):
                    check_finite(p, f"The network output for case '{rec['case_id']}'")
                    done(rec, fp, p.numpy().mean(axis=0), len(xs))
                if failures.last is not None:
                    failed(rec, fp)

        for rec, fp in track(todo, "Predicting cases"):  # a bar on a terminal (case count only)
            xs = None
            with failures.case(rec):
                items = archive_items([rec], context_slices=int(data.get("context_slices", 0)))
                for it in items:  # the stored pixels, before the window could clip them
                    check_finite(it["image"], f"Archive '{rec['image']}' row {it['row']} (case '{rec['case_id']}')")
                xs = [torch.as_tensor(tf({"image": it["image"]})["image"]) for it in items]
            if xs is None:
                failed(rec, fp)
                continue
            if pending and sum(len(p[2]) for p in pending) + len(xs) > batch_size:
                flush()
            pending.append((rec, fp, xs))
        flush()
        return
    if data.get("kind") == "archive":
        raise InputError("This checkpoint classifies 2D archive slices; the input is a volume.",
                         hint="pass a .npz slice archive or an index of archive cases.")
    tf = eval_transforms(data["preprocessing"], load=True, **common)

    def prepare(rec: dict[str, Any]) -> torch.Tensor:  # in a loader worker while the previous case is classified
        raw = raw_load(rec["image"], f"The image of case '{rec['case_id']}'")
        return check_finite(torch.as_tensor(tf({"image": raw})["image"])[None].float(),
                            f"The preprocessed image of case '{rec['case_id']}'")

    loader = case_loader([rec for rec, _ in todo], prepare, workers)
    for i, x, error in track(loader, "Predicting cases", total=len(todo)):  # a bar on a terminal
        rec, fp = todo[i]
        with failures.case(rec):
            if error is not None:
                raise error
            with inference_context(device):
                logits = first_output(net(x.to(device)))
            p = class_probabilities(logits.float())
            done(rec, fp, check_finite(p, f"The network output for case '{rec['case_id']}'").cpu().numpy()[0], 1)
        if failures.last is not None:
            failed(rec, fp)


def predict(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Run a checkpoint on ``cfg.input`` and write predictions under ``cfg.output_dir``.

    Args:
        cfg: a composed ``predict`` config (``ckpt``, ``input``, ``output_dir``, ``threshold``, ``device``,
            ``batch_size``, ``sliding_window``, ``expect``, ``overwrite``, ``on_error``, ``case_ids``,
            ``output_format``, ``dicom_seg``, ``trusted_targets``).

    Returns:
        ``{"task", "output_dir", "cases": [...rows or mask entries...], "files": [...], "failed": [...],
        "skipped": n}``; ``failed`` lists ``{"case_id", "image", "reason", "outcome"}`` of the cases that failed
        (``outcome`` ``failed``) or miss a requested output (``partial``) with ``on_error=skip`` (also in
        ``predictions.json`` and ``failed_cases.csv``); ``skipped`` counts cases complete from an earlier run.

    Raises:
        ConfigError: ``ckpt`` or ``input`` not set, or a bad ``case_ids``.
        CheckpointError: the checkpoint is unusable or not the expected one.
        InputError: the input cannot be read, two inputs share a case id, a case failed with ``on_error=stop``,
            or every case failed.
        OutputWriteError: ``output_dir`` is a file.
        OutputExistsError: ``output_dir`` holds outputs this run would replace, and ``overwrite`` is false.
    """
    check_values("predict", cfg)  # threshold in [0, 1], batch_size >= 1: before loading anything
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for key in ("ckpt", "input"):
        if c.get(key) in (None, "", "???"):
            raise ConfigError(f"predict needs '{key}'.", hint=f"pass {key}=PATH.")
    out_dir = check_output_dir(c.get("output_dir") or "predictions")  # before anything is loaded
    naming = CaseNaming.from_config(c.get("case_ids"), out_dir)
    found = discover(c["input"])
    cache: dict[str, str] = {}
    fps = [fingerprint(r, cache) for r in found.records]
    naming.assign(found.records, fps)
    redactor = naming.redactor(found)
    with redactor.active():
        if found.errors:
            raise found.errors[0]
        check_duplicates(found.records)  # before any inference
        if naming.write_mapping(found.records) is not None:
            log.info("Wrote the mapping input -> case id to case_ids.mapping_out (keep it private).")
        return _run(c, found.kind, found.records, fps, out_dir, naming, redactor)


def _run(c: dict[str, Any], kind: str, records: list[dict[str, Any]], fps: list[str], out_dir: Path,
         naming: CaseNaming, redact: Callable[[str], str]) -> dict[str, Any]:
    device = _device(str(c.get("device", "auto")))
    overwrite = bool(c.get("overwrite", False))
    failures = CaseFailures(str(c.get("on_error") or "skip"), redact=redact)
    net, meta, ckpts = load_models(c["ckpt"], device=device, expect=c.get("expect"), tta=c.get("tta"),
                                   trusted_targets=c.get("trusted_targets"))
    task = meta["task"]
    formats = check_output_formats(c.get("output_format"), task)  # before any inference
    plan, workers = None, resolve_predict_workers(c.get("num_workers", "auto"))
    if task != "classification":
        c["resample"] = check_resample_mode(c.get("resample"))
        c["resample_memory_mb"] = check_memory_mb(c.get("resample_memory_mb"))
        plan, c["postprocess_plan_sha256"] = plan_for_predict(c, meta["label_names"])
    if "dicom_seg" in formats:
        organ_code_table((c.get("dicom_seg") or {}).get("organ_codes"))
    if task != "classification" and kind != "volume":
        raise InputError(f"A {task} checkpoint needs volumes; '{c['input']}' is a slice archive.",
                         hint="pass a NIfTI file, a DICOM folder or a folder of NIfTI files.")
    threshold = float(c["threshold"] if c.get("threshold") is not None else (meta.get("threshold") or 0.5))
    header = {"checkpoint": ckpts[0] if len(ckpts) == 1 else ckpts, "tta": c.get("tta") or "none",
              "task": task, "class_names": meta["class_names"],
              "positive_classes": meta["positive_classes"], "threshold": threshold,
              "versions": meta.get("versions", {})}
    if task != "classification":
        header["resample"] = c["resample"]
        header["probability_maps"] = bool(c.get("probability_maps"))
        header["postprocessing"] = None if plan is None else {
            "n_validation_cases": plan.get("n_cases"),
            "labels": [{k: e.get(k) for k in ("value", "name", "steps", "dice_before", "dice_after", "n_cases")}
                       for e in plan["labels"]]}

    def outputs(rec: dict[str, Any]) -> list[str]:
        if task == "classification":
            return []
        maps = probability_map_names(rec["case_id"], meta["label_names"]) if c.get("probability_maps") else []
        return ([f"{rec['case_id']}_seg.nii.gz"] + ([f"{rec['case_id']}_seg.dcm"] if "dicom_seg" in formats else [])
                + maps)

    manifest = RunManifest(out_dir, _settings_digest(c, ckpts, threshold, formats, naming), overwrite, redact)
    skip = manifest.plan(records, fps, outputs)  # refusals come before any inference
    manifest.begin([ev for ev in skip if ev is not None])
    results: dict[str, dict[str, Any]] = {str(ev["case_id"]): manifest.result(ev) for ev in skip if ev is not None}
    todo = [(rec, fp) for rec, fp, ev in zip(records, fps, skip) if ev is None]
    n_skip = len(records) - len(todo)
    log.info("Predicting %d case(s) with a %s checkpoint on %s%s", len(todo), task, device,
             f" ({n_skip} complete from an earlier run, skipped)" if n_skip else "")

    def failed(rec: dict[str, Any], fp: str) -> None:
        manifest.finish_case("failed", rec["case_id"], fp, [], failure=failures.last)

    def row_of(cid: str, p: np.ndarray, n: int) -> dict[str, Any]:
        return classification_table([cid], p[None], [n], class_names=meta["class_names"],
                                    positive_classes=meta["positive_classes"] or [len(p) - 1],
                                    threshold=threshold)[0]

    if task == "classification":

        def done(rec: dict[str, Any], fp: str, p: np.ndarray, n: int) -> None:
            results[rec["case_id"]] = row = row_of(rec["case_id"], p, n)
            manifest.finish_case("done", rec["case_id"], fp, [], result=row)

        _classify(net, meta, kind, todo, device, int(c.get("batch_size", 16)), workers, failures, done, failed)
    else:
        segment = Segmenter(net, meta, device, c.get("sliding_window") or {}, resample=c.get("resample"),
                             memory_mb=c["resample_memory_mb"], plan=plan,
                             probability_maps=bool(c.get("probability_maps")))
        # the next case is read and preprocessed (in a worker) while this one is segmented
        loader = case_loader([rec for rec, _ in todo], segment.prepare, workers)
        for i, d, error in track(loader, "Predicting cases", total=len(todo)):  # a bar on a terminal
            rec, fp = todo[i]
            cid = rec["case_id"]
            manifest.start(cid, outputs(rec))
            entry = probs = None
            with failures.case(rec):
                if error is not None:
                    raise error
                entry, probs = segment(rec, out_dir, d)
            if entry is None:
                failed(rec, fp)
                continue
            written, missing = [f"{cid}_seg.nii.gz", *entry.get("probability_maps", [])], None
            if "dicom_seg" in formats:
                missing = _write_seg(entry, rec, out_dir, meta["label_names"], c.get("dicom_seg"))
                if missing is None:
                    written.append(Path(entry["dicom_seg"]).name)
            if probs is not None:
                entry["classification"] = row_of(cid, probs, 1)
            results[cid] = entry
            if missing is None:
                manifest.finish_case("done", cid, fp, written, result=entry)
            else:
                failure = failures.fail(rec, f"the requested output dicom_seg ({cid}_seg.dcm) was not written: "
                                             f"{missing}", outcome="partial")
                manifest.finish_case("partial", cid, fp, written, result=entry, failure=failure)
    return finish_run(manifest, results, records, failures, header, task, out_dir, n_skip)


def _write_seg(entry: dict[str, Any], rec: dict[str, Any], out_dir: Path, label_names, options) -> str | None:
    """Write the DICOM SEG of one case; the reason it is missing, or None when written."""
    from medeff.engine.dicom_seg import is_dicom_input

    if isinstance(rec["image"], (list, tuple)) or not is_dicom_input(rec["image"]):
        return "the input is not a DICOM series"
    try:
        write_seg_outputs([entry], [rec], out_dir, label_names, options, True)
    except (OutputWriteError, OutputExistsError):
        raise
    except Exception as exc:  # this case only: its NIfTI mask stands, the case is partial
        entry["dicom_seg_error"] = f"{type(exc).__name__}: {exc}"
    if "dicom_seg" in entry:
        return None
    return str(entry.get("dicom_seg_error") or "no DICOM SEG could be written")
