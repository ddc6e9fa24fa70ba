"""A small name -> object registry filled by a decorator, with "did you mean" lookups."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from medeff.utils.options import look_up

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually builder functions), in registration order.

    Args:
        what: what the entries are, for error messages ("model").

    Example:
        >>> models = Registry("model")
        >>> @models.register("tiny")
        ... def tiny(): return 1
        >>> models.get("tiny")()
        1
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering its target under ``name`` (default: the target's ``__name__``).

        Raises:
            ValueError: the name is already registered.
        """

        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot register {obj!r} without a name.")
            if key in self._entries:
                raise ValueError(f"{self.what} {key!r} is already registered.")
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str, *, key: str | None = None, extra_names: tuple[str, ...] = ()) -> T:
        """Return the entry for ``name``.

        Raises:
            ConfigError: unknown name, with close matches and every valid name.
        """
        if name in self._entries:
            return self._entries[name]
        look_up(name, list(self._entries) + list(extra_names), what=self.what, key=key)
        raise KeyError(name)  # pragma: no cover - look_up raised, or name is an extra name the caller handles

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names in registration order, optionally filtered by a shell-style ``pattern``."""
        return [n for n in self._entries if pattern is None or fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
