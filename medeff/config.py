"""Find the Hydra ``conf/`` folder and compose configs from it.

``conf/`` sits at the top of a checkout (and so is found by editable installs); a wheel ships the same
files as ``medeff/_conf``. ``MEDEFF_CONF_DIR`` points elsewhere when set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from medeff.errors import ConfigError

__all__ = ["conf_dir", "compose"]


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

    Errors in the overrides are re-raised as :class:`ConfigError` naming the override.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"Config '{config_name}' with overrides {list(overrides)} is invalid: "
                          f"{_one_line(str(exc))}") from exc


def _one_line(text: str) -> str:
    """Hydra/OmegaConf messages span several lines; an error paragraph is one line."""
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return " ".join(p if p.endswith((".", ":", ";")) or p is parts[-1] else f"{p}." for p in parts)
