"""Sealing: what must never be readable in SQL, encrypted with the key in ``PHI_KEY``.

A sealed blob is ``version (1 byte) | nonce (12 bytes) | AES-256-GCM ciphertext and tag``.
Each purpose (``destination-credentials``, ``patient-attributes``, ``retrieval-accessions``)
seals with its own subkey, derived from ``PHI_KEY`` by HKDF-SHA256, and binds the purpose as
associated data: a blob sealed for one purpose cannot be opened as another, and a blob
altered by one bit, or sealed under another key, is refused rather than opened to garbage.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "DESTINATION_CREDENTIALS",
    "PATIENT_ATTRIBUTES",
    "RETRIEVAL_ACCESSIONS",
    "PURPOSES",
    "SealError",
    "MissingKey",
    "Sealer",
]

DESTINATION_CREDENTIALS = "destination-credentials"
PATIENT_ATTRIBUTES = "patient-attributes"
RETRIEVAL_ACCESSIONS = "retrieval-accessions"
PURPOSES = (DESTINATION_CREDENTIALS, PATIENT_ATTRIBUTES, RETRIEVAL_ACCESSIONS)
VERSION = b"\x01"
NONCE_BYTES = 12
KEY_BYTES = 32
TAG_BYTES = 16


class SealError(ValueError):
    """A blob cannot be opened (altered, truncated, or sealed under another key or purpose),
    or there is no key to seal with."""


class MissingKey(SealError):
    """``PHI_KEY`` is not set, so nothing can be sealed or opened."""


class Sealer:
    """Seals and opens bytes for one of :data:`PURPOSES` with subkeys of one master key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SealError(f"PHI_KEY must be {KEY_BYTES} bytes, got {len(key)}")
        self._ciphers = {purpose: AESGCM(_subkey(key, purpose)) for purpose in PURPOSES}

    @classmethod
    def from_setting(cls, value: Optional[str], needed_for: str = "this") -> Sealer:
        """The sealer for ``Settings.phi_key`` (base64, already validated by the settings).

        Raises:
            MissingKey: ``value`` is None; the message says that ``needed_for`` needs PHI_KEY.
        """
        if not value:
            raise MissingKey(
                f"PHI_KEY is not set: {needed_for} needs it (the base64 of 32 "
                "random bytes, e.g. `openssl rand -base64 32`; `make run` makes "
                "one in <COVIDSCAN_VAR_DIR>/phi-key)"
            )
        try:
            key = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise SealError("PHI_KEY must be the base64 of 32 random bytes") from None
        return cls(key)

    def seal(self, purpose: str, plaintext: bytes) -> bytes:
        """``plaintext`` encrypted for ``purpose`` under a fresh random nonce."""
        nonce = os.urandom(NONCE_BYTES)
        return (
            VERSION + nonce + self._cipher(purpose).encrypt(nonce, plaintext, _associated(purpose))
        )

    def open(self, purpose: str, blob: bytes) -> bytes:
        """What :meth:`seal` sealed for ``purpose``.

        Raises:
            SealError: the blob was altered or truncated, or sealed under another key or
                purpose.
        """
        cipher = self._cipher(purpose)
        if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[:1] != VERSION:
            raise SealError(
                f"the sealed {purpose} are not a sealed blob (truncated, or of an unknown version)"
            )
        nonce, ciphertext = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            return cipher.decrypt(nonce, ciphertext, _associated(purpose))
        except InvalidTag:
            raise SealError(
                f"the sealed {purpose} cannot be opened: they were altered, or "
                "sealed under another PHI_KEY"
            ) from None

    def _cipher(self, purpose: str) -> AESGCM:
        try:
            return self._ciphers[purpose]
        except KeyError:
            raise SealError(
                f"unknown sealing purpose {purpose!r}; one of {', '.join(PURPOSES)}"
            ) from None


def _subkey(key: bytes, purpose: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=b"covidscan sealing: " + purpose.encode(),
    ).derive(key)


def _associated(purpose: str) -> bytes:
    return VERSION + purpose.encode()
