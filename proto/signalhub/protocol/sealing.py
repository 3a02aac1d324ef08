"""Sealed instructions (docs/contract.md): AES-256-GCM end to end between the gateway and one bridge.

The key is derived from the device secret that signed the stream's open, so a TLS-terminating proxy can
neither read, alter nor inject an instruction.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HKDF_INFO_PREFIX = "signalhub/v1/instruction:"
NONCE_BYTES = 12


class SealError(Exception):
    """A sealed instruction did not open: wrong key, wrong device, or altered bytes."""


def instruction_key(device_secret: bytes, device_id: str) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,  # RFC 5869: an absent salt is HashLen zero bytes, the same as an empty one
        info=(HKDF_INFO_PREFIX + device_id).encode("utf-8"),
    )
    return hkdf.derive(device_secret)


class InstructionSealer:
    """Seals and opens one device's instructions; holds the derived key, never the secret."""

    __slots__ = ("_aad", "_aead")

    def __init__(self, device_secret: bytes, device_id: str) -> None:
        self._aead = AESGCM(instruction_key(device_secret, device_id))
        self._aad = device_id.encode("utf-8")

    def __repr__(self) -> str:
        return "InstructionSealer(***)"

    def seal(self, plaintext: bytes, nonce: bytes | None = None) -> tuple[bytes, bytes]:
        """(nonce, ciphertext with tag); a fresh random nonce unless a test supplies one."""
        nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
        if len(nonce) != NONCE_BYTES:
            raise ValueError("nonce must be 12 bytes")
        return nonce, self._aead.encrypt(nonce, plaintext, self._aad)

    def open(self, nonce: bytes, ciphertext: bytes) -> bytes:
        if len(nonce) != NONCE_BYTES:
            raise SealError("nonce must be 12 bytes")
        try:
            return self._aead.decrypt(nonce, ciphertext, self._aad)
        except InvalidTag:
            raise SealError("sealed instruction did not open") from None
