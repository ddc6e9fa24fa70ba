"""Look up a name among valid options, answering a miss with "did you mean" and the full list."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from medeff.errors import ConfigError

__all__ = ["look_up", "suggest"]

T = TypeVar("T")


def suggest(name: str, options: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` options closest to ``name``."""
    return difflib.get_close_matches(str(name), [str(o) for o in options], n=n, cutoff=0.5)


def look_up(name: str, options: Mapping[str, T] | Iterable[str], *, what: str = "option", key: str | None = None) -> Any:
    """Return ``options[name]`` (mapping) or ``name`` (iterable) if valid, else raise :class:`ConfigError`.

    Args:
        name: the requested name.
        options: valid names (a mapping returns its value).
        what: what kind of thing is looked up, for the message ("model", "norm", ...).
        key: the config key the name came from, for the message.
    """
    valid = list(options.keys()) if isinstance(options, Mapping) else list(options)
    if name in valid:
        return options[name] if isinstance(options, Mapping) else name
    close = suggest(name, valid)
    where = f" (config key '{key}')" if key else ""
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(
        f"Unknown {what} {name!r}{where}. {hint}Valid {what}s: {', '.join(sorted(map(str, valid)))}.",
    )
