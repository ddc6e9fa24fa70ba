"""Which ``_target_`` callables medeff builds from configuration, and the one place that builds them.

``hydra.utils.instantiate`` calls whatever ``_target_`` names, and Hydra finds that callable by importing the
dotted name and walking module attributes. A name that merely *starts* like an allowed one can therefore reach
anything a module imports (``medeff.models.weights.os.system``, ``torch.nn.modules.module.torch.load``). medeff
resolves every ``_target_`` itself first (it follows the dotted name through modules that are already imported,
reading attributes statically: nothing is imported, called or evaluated), then compares the object it found, by
identity, with an exact allow-list:

* :func:`model_targets`: network constructors, the only targets rebuilt from a checkpoint's stored config
  (medeff's model factory and network classes, and the layer classes of ``torch.nn``);
* :func:`train_targets`: everything ``medeff train`` builds from ``conf/`` (the model targets plus medeff's data
  module, tasks, schedulers, progressive-learning and fine-tuning callbacks and MLflow logger, ``torch.optim``
  optimizers and learning-rate schedulers, Lightning's ``Trainer`` and its common callbacks and loggers).

A class or function of the user's own (a callback, a network builder) is built only when the user names it in
``trusted_targets=[pkg.module.Name]`` on the command line (``medeff train`` / ``medeff predict``); a checkpoint's
stored ``trusted_targets`` are ignored. :func:`build_checked` is the only caller of ``instantiate`` in medeff: it
checks every ``_target_`` of the node and of its keyword arguments, at any depth, and hands Hydra the checked
objects themselves (not their names), so what is called is exactly what was checked.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

from medeff.errors import ConfigError, MedeffError

__all__ = ["AllowList", "model_targets", "train_targets", "find_targets", "resolve_target", "check_targets",
           "build_checked"]

# network constructors: medeff's factory and network classes (torch.nn layer classes are added by type below)
_MODEL_NAMES = ("medeff.models.create_model", "medeff.models.EfficientNet", "medeff.models.EfficientNetUNet",
                "medeff.models.UNetDecoder", "medeff.models.ClassificationHead", "medeff.models.SegmentationHead")
# what conf/ builds, plus common Lightning callbacks and loggers that need no extra package
_TRAIN_NAMES = (
    "medeff.data.datamodule.MedeffDataModule",
    "medeff.engine.tasks.ClassificationTask", "medeff.engine.tasks.SegmentationTask", "medeff.engine.tasks.JointTask",
    "medeff.engine.schedulers.warmup_cosine", "medeff.engine.schedulers.warmup_constant",
    "medeff.engine.progressive.ProgressiveLearning", "medeff.engine.finetune.Finetuning",
    "medeff.engine.val_images.ValidationImages", "medeff.engine.norm_check.BatchNormCheck",
    "medeff.engine.mlflow_logger.mlflow_logger",
    "medeff.engine.loggers.AtomicCSVLogger", "medeff.engine.loggers.AtomicTensorBoardLogger",
    "lightning.Trainer", "lightning.pytorch.Trainer",
    *(f"lightning.pytorch.callbacks.{n}" for n in (
        "ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "EMAWeightAveraging", "StochasticWeightAveraging",
        "ModelSummary", "RichModelSummary", "TQDMProgressBar", "RichProgressBar", "Timer", "DeviceStatsMonitor",
        "GradientAccumulationScheduler", "ThroughputMonitor")),
    "lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.TensorBoardLogger",
)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*")


class AllowList:
    """An exact set of callables, compared by identity, with the dotted names they were listed under."""

    def __init__(self, objects: Mapping[str, Any], what: str) -> None:
        self._by_id = {id(obj): obj for obj in objects.values()}
        self.names = sorted(objects)
        self.what = what

    def __contains__(self, obj: Any) -> bool:
        return self._by_id.get(id(obj)) is obj

    def with_trusted(self, names: Iterable[str] | None, *, source: str = "trusted_targets") -> AllowList:
        """A copy that also allows the user's own ``names`` (imported here, since the user named them)."""
        names = list(names or [])
        if not names:
            return self
        extra = {}
        for i, name in enumerate(names):
            extra[str(name)] = resolve_target(name, key=f"{source}[{i}]", import_modules=True)
        merged = AllowList({}, self.what)
        merged._by_id = {**self._by_id, **{id(o): o for o in extra.values()}}
        merged.names = sorted(set(self.names) | set(extra))
        return merged


def _import(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):  # an optional package or a Lightning version without this class
        return None


def _classes(module_name: str, base_names: Sequence[str]) -> dict[str, Any]:
    """Public classes of ``module_name``'s namespace that subclass one of ``base_names`` (attributes of it)."""
    module = importlib.import_module(module_name)
    bases = tuple(b for b in (getattr(module, n, None) for n in base_names) if isinstance(b, type))
    return {f"{module_name}.{k}": v for k, v in vars(module).items()
            if not k.startswith("_") and isinstance(v, type) and issubclass(v, bases)}


def _listed(names: Iterable[str]) -> dict[str, Any]:
    found = {n: _import(n) for n in names}
    return {n: o for n, o in found.items() if o is not None}


@lru_cache(maxsize=1)
def model_targets() -> AllowList:
    """Network constructors: what a checkpoint's stored model config may build."""
    objects = _listed(_MODEL_NAMES)
    objects.update(_classes("torch.nn", ["Module"]))
    return AllowList(objects, "network constructors")


@lru_cache(maxsize=1)
def train_targets() -> AllowList:
    """Everything ``medeff train`` builds from ``conf/``."""
    objects = _listed(_MODEL_NAMES)
    objects.update(_classes("torch.nn", ["Module"]))
    objects.update(_listed(_TRAIN_NAMES))
    objects.update(_classes("torch.optim", ["Optimizer"]))
    objects.update(_classes("torch.optim.lr_scheduler", ["LRScheduler", "ReduceLROnPlateau"]))
    return AllowList(objects, "medeff's training components")


def find_targets(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(key path, value)`` of every ``_target_`` key at any depth of ``node``."""
    if isinstance(node, Mapping) or (hasattr(node, "items") and hasattr(node, "keys")):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from find_targets(value, path)
    elif isinstance(node, (list, tuple)) or (isinstance(node, Sequence) and not isinstance(node, (str, bytes))):
        for i, value in enumerate(node):
            yield from find_targets(value, f"{where}[{i}]")


def _describe(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__qualname__
    return f"{module}.{name}" if not isinstance(obj, types.ModuleType) else f"module {obj.__name__}"


class _Refused(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _walk(name: str, import_modules: bool) -> Any:
    if not isinstance(name, str):
        raise _Refused(f"it is a value of type {type(name).__name__}, not a dotted name")
    if not _NAME.fullmatch(name):
        raise _Refused("it is not a plain dotted name (letters, digits and '_' between dots, no part starting "
                       "with '_')")
    parts = name.split(".")
    if parts[0] not in sys.modules:
        if not import_modules:
            raise _Refused(f"module '{parts[0]}' is not one medeff builds from")
        importlib.import_module(parts[0])
    obj: Any = sys.modules[parts[0]]
    for i in range(1, len(parts)):
        prefix = ".".join(parts[: i + 1])
        try:  # static lookup: no property, descriptor or module __getattr__ runs
            obj = inspect.getattr_static(obj, parts[i])
            continue
        except AttributeError:
            pass
        if isinstance(obj, types.ModuleType):
            if prefix not in sys.modules and import_modules:
                importlib.import_module(prefix)
            if prefix in sys.modules:
                obj = sys.modules[prefix]
                continue
        raise _Refused(f"'{prefix}' does not exist among the modules medeff has loaded")
    return obj


def resolve_target(name: Any, *, key: str = "_target_", import_modules: bool = False) -> Any:
    """The object a dotted ``_target_`` name refers to, found without calling anything.

    Args:
        name: the ``_target_`` value.
        key: the config key, for the message.
        import_modules: import modules the name needs (only for names the user typed as trusted); otherwise only
            modules already loaded are followed.

    Raises:
        ConfigError: the name is not a string or dotted name, or does not exist.
    """
    try:
        return _walk(name, import_modules)
    except _Refused as exc:
        raise ConfigError(f"'{key}' = {name!r} cannot be used: {exc.why}.",
                          hint="name a class or function by its dotted path, e.g. torch.optim.AdamW.") from None
    except ImportError as exc:
        raise ConfigError(f"'{key}' = {name!r} cannot be imported: {exc}.",
                          hint="check the spelling and that its package is installed.") from None


def _check(node: Any, allowed: AllowList, source: str, error: type[MedeffError], path: str | None,
           hint: str, where: str = "") -> Any:
    """A plain copy of ``node`` with every ``_target_`` replaced by its checked object."""
    if isinstance(node, Mapping) or (hasattr(node, "items") and hasattr(node, "keys")):
        out = {}
        for key, value in node.items():
            at = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                out[key] = _checked_target(value, at, allowed, source, error, path, hint)
            else:
                out[key] = _check(value, allowed, source, error, path, hint, at)
        return out
    if isinstance(node, (list, tuple)):
        return [_check(v, allowed, source, error, path, hint, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        raise error(f"{source} holds an unresolved interpolation at '{where}' ({node!r}); nothing was built.",
                    hint="give plain values.", path=path)
    return node


def _checked_target(value: Any, key: str, allowed: AllowList, source: str, error: type[MedeffError],
                    path: str | None, hint: str) -> Any:
    shown = value if isinstance(value, str) else f"a value of type {type(value).__name__}"
    try:
        obj = _walk(value, import_modules=False)
    except _Refused as exc:
        raise error(f"{source} asks to build '{shown}' (key '{key}'), which is not an allowed target: {exc.why}. "
                    "Nothing was built.", hint=hint, path=path) from None
    if obj not in allowed or not callable(obj):
        real = _describe(obj)
        alias = f" (that name leads to {real})" if isinstance(value, str) and real != value else ""
        raise error(f"{source} asks to build '{shown}' (key '{key}'){alias}, which is not an allowed target: it is "
                    f"not one of {allowed.what}. Nothing was built.", hint=hint, path=path)
    return obj


def check_targets(node: Any, allowed: AllowList, *, source: str, error: type[MedeffError] = ConfigError,
                  path: str | None = None, hint: str | None = None) -> Any:
    """Refuse ``node`` unless every ``_target_`` in it, at any depth, resolves to an object of ``allowed``.

    Args:
        node: a config mapping (plain or OmegaConf, interpolations already resolvable).
        allowed: :func:`model_targets`, :func:`train_targets`, or one of them ``with_trusted(...)``.
        source: what the config came from, for the message (e.g. "checkpoint 'x.ckpt'").
        error: the error class to raise (CheckpointError for checkpoints).
        path: file named by the error.
        hint: how to fix it (default: use medeff's own components or ``trusted_targets``).

    Returns:
        a plain copy of ``node`` whose ``_target_`` values are the checked objects.

    Raises:
        ConfigError | CheckpointError: naming the key, the target and what it resolved to.
    """
    hint = hint or ("medeff builds only its own components from a config (the list is in medeff.engine.targets); "
                    "to build a class or function of your own, name it on the command line: "
                    "trusted_targets=[package.module.Name].")
    return _check(_plain(node), allowed, source, error, path, hint)


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def build_checked(node: Any, allowed: AllowList, *, source: str, error: type[MedeffError] = ConfigError,
                  path: str | None = None, hint: str | None = None, **kwargs: Any) -> Any:
    """Hydra's ``instantiate`` of ``node`` (``_convert_="all"``, ``kwargs``) after :func:`check_targets` on
    ``node`` and on every plain-container keyword argument; Hydra receives the checked objects, not their names.

    Raises:
        ConfigError | CheckpointError: a ``_target_`` outside ``allowed`` (nothing is built).
        hydra.errors.InstantiationException: the checked target failed with these arguments.
    """
    from hydra.utils import instantiate

    checked = check_targets(node, allowed, source=source, error=error, path=path, hint=hint)
    extra = {k: check_targets(v, allowed, source=f"{source} (argument '{k}')", error=error, path=path, hint=hint)
             if isinstance(v, (Mapping, list, tuple)) else v for k, v in kwargs.items()}
    return instantiate(checked, _convert_="all", **extra)
