"""When evaluation outputs pseudonymise case and patient identifiers, and with which key.

Ids are replaced by ``<prefix>-<12 hex>`` (``C-`` cases, ``P-`` patients) from a keyed hash (HMAC-SHA256 with a
secret salt), made by :class:`medeff.utils.pseudonyms.Pseudonymiser`. The salt comes from
the config or the ``MEDEFF_PSEUDONYM_SALT`` environment variable; without one a random salt is drawn per run, so
pseudonyms cannot be linked across runs (and cannot be reversed by hashing every possible record number).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from medeff.utils.pseudonyms import SALT_ENV, Pseudonymiser

__all__ = ["looks_identifying", "should_hash", "evaluation_pseudonymiser"]

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


def evaluation_pseudonymiser(salt: str | None) -> Pseudonymiser:
    """The pseudonymiser of the evaluation outputs: key ``salt``, else ``MEDEFF_PSEUDONYM_SALT``, else random."""
    return Pseudonymiser(salt, prefix="ID-", env=SALT_ENV)
