"""The one pseudonymiser of medeff: keyed-hash pseudonyms for patient, group and case identifiers.

Every layer that replaces an identifier by a pseudonym uses :class:`Pseudonymiser` (the dataset index's group ids,
slice-crop group ids, DICOM SEG ``PatientID``, ``medeff predict`` case ids, ids in evaluation outputs), so one key
gives one pseudonym for one identifier everywhere a prefix agrees.

Format (stable; changing it would change every stored pseudonym)::

    <prefix><first `length` hex digits of HMAC-SHA256(key, value)>

with ``key`` and ``value`` (``str(value)``) encoded as UTF-8 and ``length`` 12 by default. The prefix carries its own
separator: ``grp_3f9a0c51e2b7`` (index groups), ``case_3f09c2a1b7de`` (predict case ids), ``P-...``/``C-...``
(evaluation). Without a key a random one is drawn per instance and stored nowhere: pseudonyms then cannot be
reversed (not even by hashing every possible record number) nor linked across runs.

This module imports only the standard library and :mod:`medeff.errors`, so every layer may use it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable

from medeff.errors import ConfigError

__all__ = ["Pseudonymiser", "DEFAULT_LENGTH", "SALT_ENV"]

DEFAULT_LENGTH = 12
SALT_ENV = "MEDEFF_PSEUDONYM_SALT"  # the environment variable the evaluation commands read a key from


class Pseudonymiser:
    """Keyed-hash (HMAC-SHA256) pseudonyms ``<prefix><hex>``.

    Args:
        key: secret key (a salt). ``None`` or ``""``: read ``env`` when given, else draw a random key for this instance.
        prefix: prefix of every pseudonym, separator included (``"grp_"``, ``"case_"``, ``"P-"``).
        length: hex digits kept (4..64).
        env: name of an environment variable holding the key, read only when ``key`` is empty.

    Attributes:
        stable: True when the key was given (pseudonyms reproducible across runs), False for a random key.
    """

    def __init__(self, key: str | None = None, *, prefix: str = "", length: int = DEFAULT_LENGTH,
                 env: str | None = None) -> None:
        if key in (None, "") and env:
            key = os.environ.get(env) or None
        self.stable = key not in (None, "")
        self._key = (str(key) if self.stable else secrets.token_hex(16)).encode("utf-8")
        self.prefix = str(prefix)
        self.length = int(length)
        if not 4 <= self.length <= 64:
            raise ConfigError(f"Pseudonym length {self.length} is outside 4..64 hex digits.",
                              hint="use the default length 12 (or up to 64 to rule out collisions in huge cohorts).")

    def with_prefix(self, prefix: str) -> Pseudonymiser:
        """A pseudonymiser with the same key and length and another prefix."""
        twin = Pseudonymiser.__new__(Pseudonymiser)
        twin.stable, twin._key, twin.prefix, twin.length = self.stable, self._key, str(prefix), self.length
        return twin

    def digest(self, value: object) -> str:
        """The full HMAC-SHA256 hex digest of ``str(value)`` under the key."""
        return hmac.new(self._key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()

    def __call__(self, value: object) -> str:
        return f"{self.prefix}{self.digest(value)[: self.length]}"

    def map(self, values: Iterable[object]) -> dict:
        """value -> pseudonym for every distinct value, in first-seen order.

        Raises:
            ConfigError: two distinct values received the same pseudonym (choose a longer length).
        """
        out: dict = {}
        seen: set[str] = set()
        for v in values:
            if v in out:
                continue
            p = self(v)
            if p in seen:
                raise ConfigError(f"Two identifiers received the same pseudonym '{p}' ({self.length} hex digits).",
                                  hint="use a longer pseudonym length (e.g. 16) or another key.")
            seen.add(p)
            out[v] = p
        return out
