"""Check config values: a name among valid options (a miss answered with "did you mean" and the full list), a
probability in [0, 1], a positive integer."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from medeff.errors import ConfigError

__all__ = ["look_up", "suggest", "check_probability", "check_positive_int"]

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


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a number (booleans are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def check_probability(value: Any, key: str, *, allow_none: bool = False, hint: str | None = None) -> float | None:
    """Return ``value`` as a float if it is a finite number in [0, 1] (a score threshold, a sensitivity).

    Args:
        value: the configured value (a number, or a string holding one).
        key: the config key, for the message.
        allow_none: None is valid (and returned), e.g. "use the stored default".
        hint: how to fix it; default: set the key to a number between 0 and 1.

    Raises:
        ConfigError: not a number, NaN/infinite, or outside [0, 1].
    """
    if value is None and allow_none:
        return None
    number = _number(value)
    if number is None or not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ConfigError(f"Config key '{key}' is {value!r}; it must be a finite number between 0 and 1.",
                          hint=hint or f"set {key}=0.5 (any value from 0 to 1){' or null' if allow_none else ''}.")
    return number


def check_positive_int(value: Any, key: str, *, hint: str | None = None) -> int:
    """Return ``value`` as an int if it is a whole number >= 1 (a batch size, a count).

    Raises:
        ConfigError: not a whole number, or below 1.
    """
    number = _number(value)
    if number is None or not math.isfinite(number) or number != int(number) or number < 1:
        raise ConfigError(f"Config key '{key}' is {value!r}; it must be a whole number of at least 1.",
                          hint=hint or f"set {key} to a positive integer, e.g. {key}=1.")
    return int(number)
