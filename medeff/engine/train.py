"""``train(cfg)``: build data, net, task, callbacks, loggers and trainer from a composed config, then fit.

The config is ``conf/train.yaml`` composed with overrides (``medeff train experiment=nodule_2d data.index=...``).
Everything is built through ``_target_``; this function only wires the pieces and writes the checkpoint
self-description. ``ckpt_path=last`` resumes from the newest complete checkpoint in ``${run_dir}/checkpoints``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from medeff.engine.checkpoint import (AtomicCheckpointIO, build_metadata, last_every_time, load_checkpoint,
                                     newest_checkpoint)
from medeff.engine.loggers import ATOMIC_LOGGERS
from medeff.errors import CheckpointError, ConfigError, MedeffError
from medeff.utils.logging import get_logger

__all__ = ["train", "build", "resolve_config", "resolve_ckpt_path"]

log = get_logger(__name__)
DATAMODULE = "medeff.data.datamodule.MedeffDataModule"


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    """Resolve every interpolation and return plain containers; a missing mandatory value is a ConfigError."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or str(exc)
        raise ConfigError(f"Config value '{key}' is required but not set.",
                          hint=f"pass it as an override, e.g. {key}=...") from exc


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | Path) -> str | None:
    """``None`` -> None; ``last`` -> the newest complete checkpoint under ``run_dir/checkpoints``; a path -> itself.

    ``last`` takes the checkpoint with the highest global step among the files that load (``last.ckpt`` on a tie),
    so a run killed after it wrote ``epoch_XXX.ckpt`` and before it rewrote ``last.ckpt`` resumes from
    ``epoch_XXX.ckpt``. The file taken, and any file that did not load, are logged.

    Raises:
        CheckpointError: ``last`` asked for but the run has no complete checkpoint.
    """
    if ckpt_path in (None, "", "null"):
        return None
    if str(ckpt_path) == "last":
        folder = Path(run_dir) / "checkpoints"
        newest, step, skipped = newest_checkpoint(folder)
        for path, reason in skipped:
            log.warning("Not resuming from '%s': it does not load (%s).", path, reason)
        if newest is None:
            what = f"no checkpoint that loads ({len(skipped)} that do not)" if skipped else "no checkpoint"
            raise CheckpointError(f"ckpt_path=last but '{folder}' holds {what}.",
                                  hint="train once without ckpt_path first, or give run_dir of an earlier run.",
                                  path=str(folder))
        if newest.name != "last.ckpt":
            log.warning("ckpt_path=last: '%s' is missing or older; resuming from '%s' (global step %d), the newest "
                        "complete checkpoint of the run.", folder / "last.ckpt", newest, step)
        else:
            log.info("ckpt_path=last: resuming from '%s' (global step %d).", newest, step)
        return str(newest)
    return str(ckpt_path)


def build(node: Any, what: str, *, trusted: list[str] | None = None, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets medeff's own errors through (instead of Hydra's wrapper) and names the
    config group of any other failure.

    Args:
        trusted: the user's ``trusted_targets`` (dotted names of their own classes/functions).

    Raises:
        MedeffError: raised by the built object itself.
        ConfigError: the target cannot be imported or called with these arguments, or a ``_target_`` at any
            depth of ``node`` or ``kwargs`` resolves to something outside
            :func:`medeff.engine.targets.train_targets` and ``trusted`` (nothing is built).
    """
    from hydra.errors import InstantiationException

    from medeff.engine.targets import build_checked, train_targets

    allowed = train_targets().with_trusted(trusted)
    try:
        return build_checked(node, allowed, source=f"The {what} config", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, MedeffError):
            raise cause from None
        target = node.get("_target_", "?") if hasattr(node, "get") else "?"
        raise ConfigError(f"Cannot build {what} <{target}>: {str(exc).splitlines()[0]}",
                          hint=f"check conf/{what.split('.')[0]} and its overrides.") from exc


LIGHTNING_CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"


def _build_one(node: Any, what: str, trusted: list[str] | None) -> list:
    """Build one callback / logger; Lightning's ``ModelCheckpoint`` gets a ``last.ckpt`` companion
    (:func:`medeff.engine.checkpoint.last_every_time`) and Lightning's CSV / TensorBoard loggers are built as their
    atomic medeff counterparts (:data:`medeff.engine.loggers.ATOMIC_LOGGERS`), with the configured arguments."""
    target = node.get("_target_")
    if target != LIGHTNING_CHECKPOINT and target not in ATOMIC_LOGGERS:
        return [build(node, what, trusted=trusted)]
    args = OmegaConf.to_container(node, resolve=True)
    if target in ATOMIC_LOGGERS:
        return [build(OmegaConf.create({**args, "_target_": ATOMIC_LOGGERS[target]}), what, trusted=trusted)]
    companion = last_every_time(args)
    if companion is None:
        return [build(node, what, trusted=trusted)]
    return [build(OmegaConf.create({**args, "save_last": False}), what, trusted=trusted), companion]


def _instantiate_group(group: Any, what: str, trusted: list[str] | None) -> list:
    if not group:
        return []
    return [obj for k, c in group.items() if c is not None and "_target_" in c
            for obj in _build_one(c, f"{what}.{k}", trusted)]


def _uses_names(cfg: dict[str, Any], kind: str, dm) -> dict[str, Any]:
    if kind == "classification":
        return {}
    return {"label_names": dm.label_names}


def _save_config(resolved: dict[str, Any], run_dir: Path) -> None:
    """Write the resolved configuration of the run to ``run_dir/config.yaml`` (atomically; a resume rewrites it)."""
    from medeff.utils.atomic import write_text_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train a model as configured.

    Args:
        cfg: a composed ``train`` config.

    Returns:
        ``{"metrics": {...final logged metrics...}, "best_checkpoint": path, "last_checkpoint": path,
        "run_dir": path}``.

    Raises:
        ConfigError: a required value is missing or the parts disagree.
        CheckpointError: ``ckpt_path`` is missing, unreadable or from another task / label map.
    """
    import lightning as L

    resolved = resolve_config(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    kind = str(cfg.task.kind)
    trusted = list(resolved.get("trusted_targets") or [])
    run_dir = Path(resolved["run_dir"])
    log.info("Run folder: %s", run_dir)
    _save_config(resolved, run_dir)

    log.info("Instantiating data <%s>", cfg.data._target_)
    data_extra: dict[str, Any] = {}
    if cfg.get("seed") is not None and cfg.data.get("_target_") == DATAMODULE and "seed" not in cfg.data:
        data_extra["seed"] = int(cfg.seed)  # epoch-seeded order and augmentation: exact resume at epoch ends
    dm = build(cfg.data, "data", trusted=trusted, augmentation=resolved.get("augmentation") or {}, **data_extra)
    dm.prepare_index()

    log.info("Instantiating net <%s>", cfg.model._target_)
    net = build(cfg.model, "model", trusted=trusted)
    pretrained = getattr(net, "pretrained_cfg", None)  # medeff.models.create_model(pretrained=...)
    if isinstance(pretrained, dict) and hasattr(dm, "use_model_normalization"):
        dm.use_model_normalization(pretrained.get("mean"), pretrained.get("std"),
                                   source=f"the pretrained model ({pretrained.get('source', 'weights')})")
    optimizer = build(cfg.optimizer, "optimizer", trusted=trusted) if cfg.get("optimizer") else None
    sched_cfg = cfg.get("scheduler") or {}
    scheduler = build(sched_cfg.factory, "scheduler", trusted=trusted) if sched_cfg.get("factory") else None
    extra = _uses_names(resolved, kind, dm)
    finetune = _instantiate_group({"finetune": cfg.get("finetune")}, "finetune", trusted)  # conf/finetune
    if finetune:
        extra["param_groups"] = finetune[0].param_groups  # per-stage learning rates (medeff.engine.finetune)
    log.info("Instantiating task <%s>", cfg.task._target_)
    task = build(cfg.task, "task", trusted=trusted, net=net, optimizer=optimizer, scheduler=scheduler,
                 scheduler_interval=str(sched_cfg.get("interval", "step")), **extra)

    threshold = getattr(task, "threshold", None)
    task.medeff_meta = build_metadata(
        task=kind, config=resolved, data=dm.describe(), class_names=dm.class_names or [],
        label_names=dm.label_names or [], threshold=threshold, positive_classes=getattr(task, "positive_classes", None))

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    if ckpt_path is not None:
        load_checkpoint(ckpt_path, task=kind, class_names=dm.class_names if kind != "segmentation" else None,
                        label_names=dm.label_names if kind != "classification" else None)
        log.info("Resuming from %s", ckpt_path)

    callbacks = _instantiate_group(cfg.get("callbacks"), "callbacks", trusted) + finetune
    loggers = _instantiate_group(cfg.get("logger"), "logger", trusted)  # metrics.csv, hparams.yaml atomic
    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer = build(cfg.trainer, "trainer", trusted=trusted, callbacks=callbacks, logger=loggers or False,
                    plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir))
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    ckpt_cb = getattr(trainer, "checkpoint_callback", None)
    best = getattr(ckpt_cb, "best_model_path", "") or None
    last = run_dir / "checkpoints" / "last.ckpt"
    result = {"metrics": metrics, "best_checkpoint": best,
              "last_checkpoint": str(last) if last.is_file() else None, "run_dir": str(run_dir)}
    log.info("Finished: %s", {k: round(v, 4) for k, v in metrics.items()})
    optimized = cfg.get("optimized_metric")
    if optimized:
        result["optimized_metric"] = metrics.get(str(optimized))
    return result
