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
from medeff.utils.options import check_positive_int, check_probability

__all__ = ["conf_dir", "compose", "check_values", "VALUE_RULES"]


def _probability(value: Any, key: str) -> None:
    check_probability(value, key)


def _probabilities(value: Any, key: str) -> None:
    items = [value] if value is None or isinstance(value, (str, int, float)) else list(value)
    for i, v in enumerate(items):
        check_probability(v, f"{key}[{i}]", hint=f"give values between 0 and 1, e.g. {key}=[0.9,0.95].")


def _stored_or_probability(value: Any, key: str) -> None:
    check_probability(value, key, allow_none=True,
                      hint=f"set {key} to a number from 0 to 1, or {key}=null for the threshold stored in the checkpoint.")


def _positive_int(value: Any, key: str) -> None:
    check_positive_int(value, key)


#: config name -> (dotted key, check) of the values every composition of that config must satisfy; checked by
#: :func:`compose` and by the functions that also accept a plain dict (``predict``, ``evaluate``).
VALUE_RULES: dict[str, tuple[tuple[str, Callable[[Any, str], None]], ...]] = {
    "predict": (("threshold", _stored_or_probability), ("batch_size", _positive_int)),
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
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"Config '{config_name}' with overrides {list(overrides)} is invalid: "
                          f"{_one_line(str(exc))}") from exc
    check_values(config_name, cfg)
    return cfg


def _one_line(text: str) -> str:
    """Hydra/OmegaConf messages span several lines; an error paragraph is one line."""
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return " ".join(p if p.endswith((".", ":", ";")) or p is parts[-1] else f"{p}." for p in parts)
