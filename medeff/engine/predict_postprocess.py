"""Post-processing plans of a checkpoint or fold ensemble: where they live, choosing one, loading one at predict.

A plan (:mod:`medeff.evaluation.postprocess`) is ``postprocessing.json`` beside the model it was chosen for
(:func:`plan_path`): in the run folder given as ``ckpt`` (a fold ensemble), in the common folder of a list of
checkpoints, or beside a single checkpoint file. ``medeff postprocess`` (:func:`choose_from_config`) writes it from
validation predictions; ``medeff predict`` (:func:`plan_for_predict`) applies it when present.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medeff.errors import ConfigError
from medeff.utils.logging import get_logger

__all__ = ["plan_path", "choose_from_config", "plan_for_predict"]

log = get_logger(__name__)


def plan_path(ckpt: Any) -> Path:
    """Where the post-processing plan of ``ckpt`` (a file, a list of files or a run folder) lives."""
    from medeff.evaluation.postprocess import PLAN_FILE

    if isinstance(ckpt, (list, tuple)):
        files = [Path(str(p)) for p in ckpt]
        if len(files) > 1:
            return Path(os.path.commonpath([str(f.resolve().parent) for f in files])) / PLAN_FILE
        ckpt = files[0] if files else ""
    p = Path(str(ckpt))
    return (p if p.is_dir() else p.parent) / PLAN_FILE


def _label_names(ckpt: Any) -> list[str]:
    from medeff.engine.checkpoint import load_checkpoint
    from medeff.engine.predict import resolve_checkpoints

    meta, _ = load_checkpoint(resolve_checkpoints(ckpt)[0])
    if meta.get("task") == "classification":
        raise ConfigError(f"Checkpoint '{ckpt}' is a classification model; post-processing is for segmentation.",
                          hint="pass the checkpoint (or run folder) of a segmentation model as ckpt=.")
    return list(meta.get("label_names") or [])


def choose_from_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Choose the post-processing of a model on its validation predictions and write the plan.

    Args:
        cfg: a composed ``postprocess`` config (``ckpt``, ``index`` or ``prediction_dir``/``reference_dir``,
            ``candidates``, ``min_gain``, ``connectivity``, ``output``, ``overwrite``).

    Returns:
        The plan, with ``path`` (where it was written).

    Raises:
        ConfigError: neither ``ckpt`` nor ``output`` given, or bad settings.
        OutputExistsError: the plan file exists and ``overwrite`` is false.
        InputError, CheckpointError: unreadable inputs or checkpoint.
    """
    from medeff.evaluation.postprocess import choose_postprocessing, validation_pairs, write_plan
    from medeff.utils.atomic import check_writable

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    ckpt, output = c.get("ckpt"), c.get("output")
    if ckpt in (None, "", "???") and not output:
        raise ConfigError("postprocess needs 'ckpt' (the plan is written beside it) or 'output'.",
                          hint="pass ckpt=RUN_FOLDER (fold ensemble) or ckpt=FILE.ckpt, or output=PLAN.json.")
    names = _label_names(ckpt) if ckpt not in (None, "", "???") else list(c.get("label_names") or [])
    path = Path(output) if output else plan_path(ckpt)
    overwrite = bool(c.get("overwrite", False))
    check_writable(path, overwrite=overwrite)  # before reading every validation case
    n, pairs = validation_pairs(c.get("index"), prediction_dir=c.get("prediction_dir"),
                                reference_dir=c.get("reference_dir"),
                                geometry_tolerance_mm=float(c.get("geometry_tolerance_mm", 1e-3)))
    labels = c.get("labels")
    plan = choose_postprocessing(pairs, labels=labels if labels else None,
                                 label_names=names or None, candidates=list(c.get("candidates") or []),
                                 min_gain=float(c.get("min_gain", 0.0)), connectivity=c.get("connectivity"),
                                 n_cases=n)
    write_plan(plan, path, overwrite=overwrite)
    log.info("Wrote the post-processing plan %s", path)
    return {**plan, "path": str(path)}


def plan_for_predict(c: Mapping[str, Any], label_names: Sequence[str]) -> tuple[dict[str, Any] | None, str | None]:
    """The plan ``medeff predict`` applies: ``postprocess.plan``, else the one beside ``ckpt`` when it exists;
    None with ``postprocess.enabled=false``. Also returns the SHA-256 of the plan file (for the settings digest).

    Raises:
        InputError: a plan that cannot be read, is not a plan, or was chosen for other labels.
        ConfigError: an explicit ``postprocess.plan`` that does not exist, or unknown ``postprocess`` keys.
    """
    from medeff.evaluation.postprocess import load_plan, plan_summary

    opts = dict(c.get("postprocess") or {})
    unknown = set(opts) - {"enabled", "plan"}
    if unknown:
        raise ConfigError(f"Unknown key(s) {sorted(unknown)} in postprocess.", hint="valid keys: enabled, plan.")
    if opts.get("enabled", True) in (False, "false"):
        return None, None
    if opts.get("plan"):
        path = Path(str(opts["plan"]))
        if not path.is_file():
            raise ConfigError(f"postprocess.plan '{path}' does not exist.",
                              hint="write it with medeff postprocess, or leave postprocess.plan=null.")
    else:
        path = plan_path(c["ckpt"])
        if not path.is_file():
            return None, None
    plan = load_plan(path, label_names=label_names)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    applied = [e for e in plan["labels"] if e.get("steps")]
    log.info("Post-processing from %s (chosen on %s validation case(s)): %s", path.name, plan.get("n_cases"),
             "; ".join(plan_summary({"labels": applied})) or "no step raised the validation Dice, none applied")
    return plan, digest
