"""Checkpoints that describe themselves, written atomically and read with ``torch.load(weights_only=True)``.

Next to Lightning's own entries (``state_dict``, optimizer and loop state), every medeff checkpoint holds a
``"medeff"`` entry made only of plain types (dict, list, str, int, float, bool, None)::

    {"format": "medeff-checkpoint", "format_version": 1,
     "task": "classification" | "segmentation" | "joint",
     "config": {...},            # the resolved training config
     "class_names": [...], "label_names": [...],
     "data": {...},              # kind, spatial_dims, in_channels, patch_size, context_slices, preprocessing
     "threshold": 0.5, "positive_classes": [1],
     "versions": {"medeff": ..., "torch": ..., "monai": ..., "lightning": ...}}

so ``medeff predict`` needs nothing but the checkpoint and the input. A checkpoint of another task or label map is
refused with :class:`medeff.errors.CheckpointError`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from medeff.errors import CheckpointError, unpickling_reason
from medeff.utils.atomic import atomic_path

__all__ = ["FORMAT", "FORMAT_VERSION", "AtomicCheckpointIO", "last_every_time", "build_metadata",
           "load_checkpoint", "check_compatible", "plain", "newest_checkpoint", "LastCheckpoint"]

FORMAT = "medeff-checkpoint"
FORMAT_VERSION = 1


def plain(obj: Any) -> Any:
    """Convert ``obj`` to plain Python types (what ``weights_only`` loading accepts), failing loudly otherwise."""
    if obj is None:
        return None
    for kind in (bool, int, float, str):  # subclasses (TorchVersion, numpy scalars) become the plain type
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in checkpoint metadata")


def _versions() -> dict[str, str]:
    import lightning
    import monai

    import medeff

    return {"medeff": medeff.__version__, "torch": torch.__version__, "monai": monai.__version__,
            "lightning": lightning.__version__}


def build_metadata(*, task: str, config: Mapping[str, Any], data: Mapping[str, Any],
                   class_names: Sequence[str] = (), label_names: Sequence[str] = (), threshold: float | None = None,
                   positive_classes: Sequence[int] | None = None) -> dict[str, Any]:
    """The ``"medeff"`` checkpoint entry (plain types only)."""
    return plain({
        "format": FORMAT, "format_version": FORMAT_VERSION, "task": task, "config": dict(config),
        "class_names": list(class_names), "label_names": list(label_names), "data": dict(data),
        "threshold": threshold, "positive_classes": list(positive_classes or []), "versions": _versions(),
    })


def _torch_load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist.",
                              hint="check the path (training writes checkpoints/last.ckpt and the best epochs).",
                              path=str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"Checkpoint '{path}' holds objects other than tensors and plain values, so it is "
                              f"not loaded ({unpickling_reason(exc)}).",
                              hint="only load checkpoints written by medeff train; re-export untrusted files.",
                              path=str(path)) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"Checkpoint '{path}' is unreadable or truncated ({type(exc).__name__}: {exc}).",
                              hint="use another checkpoint (last.ckpt or a best epoch) or retrain.",
                              path=str(path)) from exc


def check_compatible(meta: Mapping[str, Any], path: str | Path, *, task: str | None = None,
                     class_names: Sequence[str] | None = None, label_names: Sequence[str] | None = None) -> None:
    """Refuse a checkpoint whose task, class names or label names differ from the expected ones.

    Raises:
        CheckpointError: naming what differs.
    """
    if task is not None and meta.get("task") != task:
        raise CheckpointError(f"Checkpoint '{path}' was trained for task '{meta.get('task')}', not '{task}'.",
                              hint="use a checkpoint of the same task, or change task/experiment.", path=str(path))
    for what, want in (("class_names", class_names), ("label_names", label_names)):
        have = list(meta.get(what) or [])
        if want is not None and list(want) and have and have != list(want):
            raise CheckpointError(f"Checkpoint '{path}' has {what} {have}, but {list(want)} are expected.",
                                  hint="use a checkpoint trained on the same label map, or fix the index/config.",
                                  path=str(path))


def load_checkpoint(path: str | Path, *, task: str | None = None, class_names: Sequence[str] | None = None,
                    label_names: Sequence[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a medeff checkpoint safely (``weights_only=True``) and check what it is for.

    Args:
        path: checkpoint file.
        task: expected task, or None for any.
        class_names: expected class names, or None.
        label_names: expected segmentation label names, or None.

    Returns:
        ``(metadata, checkpoint)``: the ``"medeff"`` entry and the whole checkpoint dictionary.

    Raises:
        CheckpointError: missing, unreadable, not a medeff checkpoint, or incompatible.
    """
    path = Path(path)
    ckpt = _torch_load(path)
    meta = ckpt.get("medeff") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a medeff checkpoint (no 'medeff' description inside).",
                              hint="use a checkpoint written by `medeff train`.", path=str(path))
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"Checkpoint '{path}' has format version {meta.get('format_version')}; this medeff "
                              f"reads up to {FORMAT_VERSION}.", hint="upgrade medeff.", path=str(path))
    if "state_dict" not in ckpt:
        raise CheckpointError(f"Checkpoint '{path}' has no weights (state_dict).", hint="retrain or re-save it.",
                              path=str(path))
    check_compatible(meta, path, task=task, class_names=class_names, label_names=label_names)
    return meta, ckpt


def newest_checkpoint(folder: str | Path) -> tuple[Path | None, int, list[tuple[Path, str]]]:
    """The complete checkpoint of ``folder`` with the highest global step (``last.ckpt`` wins a tie).

    A checkpoint is complete when :func:`load_checkpoint` accepts it; ``.tmp-*`` files of an interrupted atomic
    write are not considered. A run killed after Lightning wrote ``epoch_XXX.ckpt`` and before it rewrote
    ``last.ckpt`` thus resumes from ``epoch_XXX.ckpt``.

    Returns:
        ``(path, global_step, skipped)`` with ``skipped`` the ``(file, reason)`` of the ``*.ckpt`` files that did not
        load; ``path`` is None (and ``global_step`` -1) when no file loads or the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None, -1, []
    best: tuple[tuple[int, bool, float], Path, int] | None = None
    skipped: list[tuple[Path, str]] = []
    for path in sorted(folder.glob("*.ckpt")):
        if path.name.startswith(".tmp-") or not path.is_file():
            continue
        try:
            _, ckpt = load_checkpoint(path)
            step = int(ckpt["global_step"])
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            skipped.append((path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        rank = (step, path.name == "last.ckpt", path.stat().st_mtime)
        if best is None or rank > best[0]:
            best = (rank, path, step)
    return (None, -1, skipped) if best is None else (best[1], best[2], skipped)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O: save through a temporary file + rename, load with ``weights_only=True``.

    A crash while saving never leaves a truncated ``last.ckpt``; resuming refuses files that would need
    arbitrary code to unpickle.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options.")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: str | Path, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return _torch_load(Path(path))


#: the ModelCheckpoint arguments that say when and how a checkpoint is written (copied to the last.ckpt companion)
_WHEN = ("dirpath", "every_n_epochs", "every_n_train_steps", "train_time_interval", "save_on_train_epoch_end",
         "save_weights_only", "verbose")


def last_every_time(checkpoint_args: Mapping[str, Any]) -> ModelCheckpoint | None:
    """A second ``ModelCheckpoint`` that rewrites ``last.ckpt`` at every checkpointing point of the first.

    Lightning (2.6) rewrites ``last.ckpt`` only when a new top-k file is saved, so after epochs whose monitored
    metric did not improve (or was NaN), ``last.ckpt`` is an older epoch and ``ckpt_path=last`` after a crash would
    silently repeat them. ``medeff train`` builds Lightning's ``ModelCheckpoint`` as configured but with
    ``save_last=False``, and adds this companion, made with public arguments only: no monitor, one file kept,
    ``filename="last"``, no version counter (the file is replaced), at the same points (``every_n_*``,
    ``save_on_train_epoch_end``) as the first. Lightning orders checkpoint callbacks after the others and keeps
    their order, so at an epoch end the best file is written first, then ``last.ckpt``.

    Args:
        checkpoint_args: the arguments of the configured ``ModelCheckpoint``.

    Returns:
        The companion, or None when the configured checkpoint needs none (``save_last`` not true, or no monitor:
        Lightning then writes ``last.ckpt`` with every checkpoint already).
    """
    if checkpoint_args.get("save_last") is not True or not checkpoint_args.get("monitor"):
        return None
    when = {k: checkpoint_args[k] for k in _WHEN if k in checkpoint_args}
    return LastCheckpoint(filename=ModelCheckpoint.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1,
                          save_last=False, enable_version_counter=False, **when)


class LastCheckpoint(ModelCheckpoint):
    """The ``last.ckpt`` companion of :func:`last_every_time`; it also writes ``last.ckpt`` when training ends.

    A run whose last epochs had no checkpointing point (``check_val_every_n_epoch`` larger than the epochs run, a
    stop between validations) would otherwise end without ``last.ckpt`` for those epochs, as Lightning's own
    ``save_last`` does at the end of training. Only public Lightning interfaces are used: the file's ``global_step``
    is compared with the trainer's, and ``trainer.save_checkpoint`` writes it (through the atomic checkpoint I/O).
    """

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_end(trainer, pl_module)
        if trainer.fast_dev_run or trainer.sanity_checking or self.dirpath is None:
            return
        last = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if not _holds_step(last, int(trainer.global_step)):  # missing, older or unreadable: (re)write it
            trainer.save_checkpoint(str(last), weights_only=bool(self.save_weights_only))


def _holds_step(path: Path, step: int) -> bool:
    """Whether the checkpoint at ``path`` loads and was written at global step ``step``."""
    if not path.is_file():
        return False
    try:
        return int(_torch_load(path).get("global_step", -1)) == step
    except (CheckpointError, OSError, ValueError, TypeError):
        return False
