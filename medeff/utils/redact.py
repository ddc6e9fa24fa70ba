"""Withhold input names (file and folder names that may name a patient) from log lines, warnings and errors.

A :class:`Redactor` replaces each secret string with its placeholder. Inside :meth:`Redactor.active`, every log
record reaching a handler of the ``medeff`` or root logger is rewritten, warnings are shown rewritten, and a
:class:`~medeff.errors.MedeffError` leaving the block has its message, hint and path rewritten. Code that writes
files passes their text through the redactor itself.

Short secrets (under 8 characters) are replaced only as whole tokens (not inside a longer word or number), longer
ones wherever they occur; matching ignores case.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Mapping

from medeff.errors import MedeffError

__all__ = ["Redactor", "MIN_SECRET_LENGTH"]

#: Names shorter than this are not withheld (too short to name anyone, too likely to match ordinary words).
MIN_SECRET_LENGTH = 3


class Redactor:
    """Replace secrets by placeholders in text.

    Args:
        secrets: ``{secret: placeholder}``; secrets shorter than :data:`MIN_SECRET_LENGTH` are ignored.
    """

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        self._map = {s.lower(): p for s, p in (secrets or {}).items() if len(s) >= MIN_SECRET_LENGTH}
        self._pattern = None
        if self._map:
            parts = []
            for s in sorted(self._map, key=len, reverse=True):
                esc = re.escape(s)
                parts.append(esc if len(s) >= 8 else rf"(?<![A-Za-z0-9]){esc}(?![A-Za-z0-9])")
            self._pattern = re.compile("|".join(parts), re.IGNORECASE)

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text):
        """``text`` with every secret replaced (non-strings and None pass unchanged)."""
        if self._pattern is None or not isinstance(text, str):
            return text
        return self._pattern.sub(lambda m: self._map[m.group(0).lower()], text)

    def error(self, exc: MedeffError) -> MedeffError:
        """Rewrite the message, hint and path of ``exc`` in place; return it."""
        exc.message, exc.hint, exc.path = self(exc.message), self(exc.hint), self(exc.path)
        exc.args = (str(exc),)
        return exc

    @contextlib.contextmanager
    def active(self) -> Iterator[Redactor]:
        """Rewrite log records, warnings and medeff errors while the block runs (no-op without secrets)."""
        if not self:
            yield self
            return
        filt = _Filter(self)
        handlers = [h for name in ("medeff", None) for h in logging.getLogger(name).handlers]
        for h in handlers:
            h.addFilter(filt)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            shown(self(str(message)), category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            yield self
        except MedeffError as exc:
            raise self.error(exc)
        finally:
            warnings.showwarning = shown
            for h in handlers:
                h.removeFilter(filt)


class _Filter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        new = self.redactor(text)
        if new != text:
            record.msg, record.args = new, None
        return True
