"""Which ``_target_`` callables may be built from configuration that comes from a file.

``hydra.utils.instantiate`` calls whatever ``_target_`` names, so a config read from a data file (a checkpoint's
stored training config, a plan) could otherwise run ``os.system`` or ``torch.hub.load``. medeff therefore builds the
network of a checkpoint only from :data:`MODEL_TARGETS` (network constructors: medeff's model factory and
modules, MONAI networks, ``torch.nn`` layers), and refuses nested ``_target_`` keys outside
:data:`NESTED_TARGETS` in training configs (the top-level targets of ``conf/`` groups are the user's own choice).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from medeff.errors import ConfigError, MedeffError

__all__ = ["MODEL_TARGETS", "NESTED_TARGETS", "find_targets", "check_targets"]

# network constructors only: no loaders, no I/O, no bundles, no hub
MODEL_TARGETS = ("medeff.models.", "monai.networks.nets.", "monai.networks.blocks.", "monai.networks.layers.",
                 "torch.nn.")
NESTED_TARGETS = MODEL_TARGETS + ("medeff.engine.", "medeff.data.", "torch.optim.", "monai.losses.",
                                  "lightning.pytorch.callbacks.", "lightning.pytorch.loggers.")


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


def _allowed(target: Any, prefixes: Sequence[str]) -> bool:
    if not isinstance(target, str) or not target or any(c in target for c in "$:{}() "):
        return False
    return any(target.startswith(p) for p in prefixes) and ".." not in target


def check_targets(node: Any, prefixes: Sequence[str], *, source: str, error: type[MedeffError] = ConfigError,
                  skip_top: bool = False, path: str | None = None) -> None:
    """Refuse any ``_target_`` in ``node`` that does not start with one of ``prefixes``.

    Args:
        node: a config mapping (plain or OmegaConf).
        prefixes: allowed dotted-name prefixes.
        source: what the config came from, for the message (e.g. "checkpoint 'x.ckpt'").
        error: the error class to raise (CheckpointError for checkpoints).
        skip_top: do not check ``node``'s own top-level ``_target_`` (only nested ones).
        path: file named by the error.

    Raises:
        ConfigError | CheckpointError: naming the key and the refused target.
    """
    for key, target in find_targets(node):
        if skip_top and key == "_target_":
            continue
        if not _allowed(target, prefixes):
            raise error(f"{source} asks to build '{target}' (key '{key}'), which is not an allowed target; nothing "
                        f"was built.", hint=f"only {', '.join(p + '*' for p in prefixes)} can be built from "
                        "this config. Use a checkpoint or config written by medeff.", path=path)

