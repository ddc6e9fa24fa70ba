"""Find the Hydra ``conf/`` folder and compose configs from it.

``conf/`` sits at the top of a checkout (and so is found by editable installs); a wheel ships the same
files as ``medeff/_conf``. ``MEDEFF_CONF_DIR`` points elsewhere when set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medeff.errors import ConfigError
from medeff.utils.options import check_positive_int, check_probability, suggest

__all__ = ["conf_dir", "compose", "check_values", "check_known_keys", "rename_deprecated_overrides",
           "rename_deprecated_keys", "VALUE_RULES", "KNOWN_KEYS_ONLY", "DEPRECATED_KEYS"]


def _probability(value: Any, key: str) -> None:
    check_probability(value, key)


def _probabilities(value: Any, key: str) -> None:
    items = [value] if value is None or isinstance(value, (str, int, float)) else list(value)
    for i, v in enumerate(items):
        check_probability(v, f"{key}[{i}]", hint=f"give values between 0 and 1, e.g. {key}=[0.9,0.95].")


def _stored_or_probability(value: Any, key: str) -> None:
    check_probability(value, key, allow_none=True,
                      hint=f"set {key} to a number from 0 to 1, or {key}=null for the threshold stored in the "
                           "checkpoint.")


def _positive_int(value: Any, key: str) -> None:
    check_positive_int(value, key)


#: config name -> (dotted key, check) of the values every composition of that config must satisfy; checked by
#: :func:`compose` and by the functions that also accept a plain dict (``predict``, ``evaluate``).
VALUE_RULES: dict[str, tuple[tuple[str, Callable[[Any, str], None]], ...]] = {
    "predict": (("threshold", _stored_or_probability), ("batch_size", _positive_int)),
    "train": (("data.batch_size", _positive_int), ("data.val_batch_size", _positive_int)),
    "evaluate": (("classification.threshold", _probability),
                 ("classification.target_sensitivities", _probabilities)),
}

_ABSENT = object()


def _select(cfg: Any, key: str) -> Any:
    """The value at a dotted ``key`` of a DictConfig or nested dict, or ``_ABSENT`` (missing, or an interpolation
    that does not resolve yet: the code reading it reports that)."""
    from omegaconf.errors import OmegaConfBaseException

    node = cfg
    try:
        for part in key.split("."):
            if node is None or not hasattr(node, "keys") or part not in node:
                return _ABSENT
            node = node[part]
    except OmegaConfBaseException:
        return _ABSENT
    return node


def check_values(config_name: str, cfg: Any) -> None:
    """Check the values of a ``config_name`` config (a DictConfig or a plain dict) against :data:`VALUE_RULES`.

    Raises:
        ConfigError: naming the first offending key, what is wrong and how to fix it.
    """
    for key, check in VALUE_RULES.get(config_name, ()):
        value = _select(cfg, key)
        if value is not _ABSENT:
            check(value, key)


def conf_dir() -> Path:
    """Return the folder holding medeff's Hydra configs.

    Raises:
        ConfigError: no config folder could be found.
    """
    env = os.environ.get("MEDEFF_CONF_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "conf", here / "_conf"]
    for cand in candidates:
        if (cand / "paths" / "default.yaml").is_file():
            return cand
    raise ConfigError(
        f"No medeff config folder found (looked in {', '.join(str(c) for c in candidates)}).",
        hint="reinstall medeff, or set MEDEFF_CONF_DIR to the folder holding its conf/ files.",
    )


def compose(config_name: str, overrides: Sequence[str] = ()):  # -> omegaconf.DictConfig
    """Compose ``config_name`` from :func:`conf_dir` with Hydra overrides, outside ``@hydra.main``.

    Errors in the overrides are re-raised as :class:`ConfigError` naming the override; the values of the configs
    listed in :data:`VALUE_RULES` are checked (a threshold outside [0, 1], a batch size below 1 is a ConfigError).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    overrides = rename_deprecated_overrides(config_name, overrides)
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        cause = exc.__cause__
        not_in_struct = isinstance(cause, (ConfigAttributeError, ConfigKeyError))
        missing = getattr(cause, "full_key", None) if not_in_struct else None
        if config_name in KNOWN_KEYS_ONLY and missing:  # `a.typo=1`: no "use +a.typo" advice, a suggestion
            raise _unknown_keys_error(config_name, [str(missing)], _reference(config_name, overrides),
                                      overrides) from exc
        raise ConfigError(f"Config '{config_name}' with overrides {list(overrides)} is invalid: "
                          f"{_one_line(str(exc))}") from exc
    if config_name in KNOWN_KEYS_ONLY:
        check_known_keys(config_name, cfg, overrides)
    check_values(config_name, cfg)
    return cfg


#: config name -> {deprecated key: its name now}; the old name still works and logs a deprecation warning.
DEPRECATED_KEYS: dict[str, dict[str, str]] = {
    "evaluate": {"out_dir": "output_dir"},
    "report": {"out_dir": "output_dir"},
}


def _deprecated(config_name: str, old: str, new: str) -> None:
    from medeff.utils.logging import get_logger

    get_logger(__name__).warning("Config key '%s' of medeff %s is deprecated and will be removed: use '%s' (the same "
                                 "name as in medeff predict).", old, config_name, new)


def rename_deprecated_overrides(config_name: str, overrides: Sequence[str]) -> list[str]:
    """Rewrite overrides of deprecated keys (:data:`DEPRECATED_KEYS`) to the current names, logging a warning.

    Raises:
        ConfigError: the old and the new name are both given, with different values.
    """
    renames = DEPRECATED_KEYS.get(config_name) or {}
    out, renamed = [], set()
    for override in overrides:
        key, eq, value = override.partition("=")
        new = renames.get(key.lstrip("+~"))
        if eq and new:
            _deprecated(config_name, key.lstrip("+~"), new)
            override = f"{new}={value}"
            renamed.add(new)
        out.append(override)
    for new in renamed:
        values = {o.partition("=")[2] for o in out if o.partition("=")[0].lstrip("+") == new}
        if len(values) > 1:
            old = next(k for k, v in renames.items() if v == new)
            raise ConfigError(f"medeff {config_name} was given both '{new}' and its deprecated name '{old}', with "
                              f"different values ({', '.join(sorted(values))}).", hint=f"give only {new}=...")
    return out


def rename_deprecated_keys(config_name: str, cfg: dict) -> dict:
    """A copy of a plain config dict with the deprecated top-level keys renamed (logging a warning); a deprecated
    key that is set wins over the default of its new name."""
    out = dict(cfg)
    for old, new in (DEPRECATED_KEYS.get(config_name) or {}).items():
        value = out.pop(old, None)
        if value is not None:
            _deprecated(config_name, old, new)
            out[new] = value
    return out


#: configs whose keys are all defined in conf/<name>.yaml: an override adding another key (``+a.typo=1``) is a
#: ConfigError with a "did you mean" suggestion. (``train`` is open: ``+model.width=0.5`` passes options on.)
KNOWN_KEYS_ONLY = frozenset({"evaluate", "report", "predict", "index"})


def _is_group_override(override: str, conf: Path) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return "." not in key and "@" not in key and (conf / key).is_dir()


def _reference(config_name: str, overrides: Sequence[str]) -> dict:
    """``config_name`` with only its config-group choices from ``overrides``: the keys it defines."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    conf = conf_dir()
    groups = [o for o in overrides if _is_group_override(o, conf)]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        ref = hydra_compose(config_name=config_name, overrides=groups)
    return OmegaConf.to_container(ref, resolve=False)


def _unknown_paths(node: Any, ref: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``node`` that ``ref`` does not define. Below a value that is null, empty or not a mapping in
    ``ref`` (``labels: {}``, ``compare: null``) any key is the user's."""
    out = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        if key not in ref:
            out.append(path)
        elif isinstance(ref[key], dict) and ref[key] and isinstance(value, dict):
            out += _unknown_paths(value, ref[key], f"{path}.")
    return out


def _unknown_keys_error(config_name: str, paths: Sequence[str], ref: dict, overrides: Sequence[str]) -> ConfigError:
    parts = []
    for path in paths:
        node, known = ref, []
        names = path.split(".")
        for i, name in enumerate(names):  # stop at the first name the config does not define
            known = [str(k) for k in node] if isinstance(node, dict) else []
            if not isinstance(node, dict) or name not in node:
                path = ".".join(names[:i + 1])
                break
            node = node[name]
        parent = path.rpartition(".")[0]
        close = suggest(path.rpartition(".")[2], known)
        mean = f"did you mean {' or '.join(repr(f'{parent}.{c}' if parent else c) for c in close)}? " if close \
            else ""
        where = f"under '{parent}'" if parent else "at the top level"
        parts.append(f"'{path}' is not a key of conf/{config_name}.yaml; {mean}Keys {where}: "
                     f"{', '.join(sorted(known))}.")
    given = [o for o in overrides if any(o.lstrip("+~").startswith(p.split(".")[0]) for p in paths)]
    return ConfigError(f"Unknown config key(s){f' in {given}' if given else ''}: {' '.join(dict.fromkeys(parts))}",
                       hint=f"use a key that conf/{config_name}.yaml defines (docs/configuration.md lists them).")


def check_known_keys(config_name: str, cfg: Any, overrides: Sequence[str] | None = None) -> None:
    """Refuse keys of ``cfg`` (a DictConfig or a plain dict) that ``conf/<config_name>.yaml`` does not define.

    Args:
        config_name: the config ``cfg`` is a version of.
        cfg: the config to check.
        overrides: the overrides ``cfg`` was composed with (their group choices apply); None: ``cfg`` came from
            elsewhere (a plain dict), always checked.

    Raises:
        ConfigError: naming each unknown key, the closest known keys ("did you mean") and the valid ones.
    """
    from omegaconf import OmegaConf

    if overrides is not None and not any(o.startswith("+") or "={" in o for o in overrides):
        return  # only `+` adds keys (Hydra refuses `a.typo=1`), or a mapping value replacing a section
    overrides = list(overrides or ())
    ref = _reference(config_name, overrides)
    node = OmegaConf.to_container(cfg, resolve=False) if not isinstance(cfg, dict) else cfg
    unknown = _unknown_paths(node, ref)
    if unknown:
        raise _unknown_keys_error(config_name, unknown, ref, overrides)


def _one_line(text: str) -> str:
    """Hydra/OmegaConf messages span several lines; an error paragraph is one line."""
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return " ".join(p if p.endswith((".", ":", ";")) or p is parts[-1] else f"{p}." for p in parts)
