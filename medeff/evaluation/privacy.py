"""Pseudonymisation of case and patient identifiers before they reach any output.

Ids are replaced by ``<prefix>-<12 hex>`` from a keyed hash (HMAC-SHA256 with a secret salt). The salt comes from
the config or the ``MEDEFF_PSEUDONYM_SALT`` environment variable; without one a random salt is drawn per run, so
pseudonyms cannot be linked across runs (and cannot be reversed by hashing every possible record number).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable

__all__ = ["Pseudonymiser", "looks_identifying"]

# patterns that suggest an id carries a real identifier: DICOM person names (DOE^JOHN), record numbers
# (MRN12345, 6+ digit runs), dates, e-mail addresses, national-id-like digit groups
_IDENTIFYING = [
    re.compile(r"\^"),
    re.compile(r"[A-Za-z]{2,}\d{4,}"),
    re.compile(r"\d{6,}"),
    re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}"),
    re.compile(r"\d{1,2}[-/.]\d{1,2}[-/.]\d{4}"),
    re.compile(r"@"),
    re.compile(r"(?i)\b(mrn|nhs|ssn|name|dob|birth)\b"),
]


def looks_identifying(value: str) -> bool:
    """True when ``value`` matches a pattern typical of patient identifiers (names, record numbers, dates)."""
    return any(p.search(str(value)) for p in _IDENTIFYING)


class Pseudonymiser:
    """Keyed-hash pseudonyms for ids.

    Args:
        salt: secret key; ``None`` reads ``MEDEFF_PSEUDONYM_SALT`` or draws a random one for this run.
    """

    def __init__(self, salt: str | None = None) -> None:
        salt = salt or os.environ.get("MEDEFF_PSEUDONYM_SALT")
        self.stable = bool(salt)
        self._key = (salt or secrets.token_hex(16)).encode()

    def __call__(self, value: object, prefix: str = "ID") -> str:
        digest = hmac.new(self._key, str(value).encode(), hashlib.sha256).hexdigest()[:12]
        return f"{prefix}-{digest}"

    def map(self, values: Iterable[object], prefix: str = "ID") -> dict:
        """Pseudonym for each distinct value."""
        return {v: self(v, prefix) for v in dict.fromkeys(values)}

    @staticmethod
    def should_hash(values: Iterable[object], mode: str | bool) -> bool:
        """Decide whether to hash a column: ``True``/``False``, or ``"auto"`` (hash if any value looks identifying)."""
        if isinstance(mode, bool):
            return mode
        mode = str(mode).lower()
        if mode in ("true", "yes", "on", "always"):
            return True
        if mode in ("false", "no", "off", "never"):
            return False
        return any(looks_identifying(v) for v in values)
