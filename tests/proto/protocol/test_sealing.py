"""Sealed instructions against the contract's vector, and everything that must not open."""

from __future__ import annotations

import pytest

from signalhub.protocol.sealing import InstructionSealer, SealError, instruction_key
from tests.conftest import CONTRACT_VECTORS as VECTORS

SEALED = VECTORS["sealed_instruction"]
SECRET = bytes.fromhex(VECTORS["secret_bytes_hex"])
DEVICE = SEALED["device_id"]
NONCE = bytes.fromhex(SEALED["nonce_hex"])
PLAINTEXT = bytes.fromhex(SEALED["plaintext_hex"])
CIPHERTEXT = bytes.fromhex(SEALED["ciphertext_hex"])


def test_derived_key_matches_vector() -> None:
    assert instruction_key(SECRET, DEVICE).hex() == SEALED["derived_key_hex"]


def test_seal_matches_vector_and_opens() -> None:
    sealer = InstructionSealer(SECRET, DEVICE)
    assert sealer.seal(PLAINTEXT, NONCE) == (NONCE, CIPHERTEXT)
    assert sealer.open(NONCE, CIPHERTEXT) == PLAINTEXT


def test_fresh_nonce_each_time() -> None:
    sealer = InstructionSealer(SECRET, DEVICE)
    (n1, c1), (n2, c2) = sealer.seal(PLAINTEXT), sealer.seal(PLAINTEXT)
    assert n1 != n2 and c1 != c2


@pytest.mark.parametrize("position", [0, 5, len(CIPHERTEXT) - 1])
def test_flipped_ciphertext_bit_does_not_open(position: int) -> None:
    altered = bytearray(CIPHERTEXT)
    altered[position] ^= 0x01
    with pytest.raises(SealError):
        InstructionSealer(SECRET, DEVICE).open(NONCE, bytes(altered))


def test_other_nonce_device_or_secret_does_not_open() -> None:
    with pytest.raises(SealError):
        InstructionSealer(SECRET, DEVICE).open(bytes(12), CIPHERTEXT)
    with pytest.raises(SealError):
        InstructionSealer(SECRET, DEVICE[:-1] + "1").open(NONCE, CIPHERTEXT)
    with pytest.raises(SealError):
        InstructionSealer(bytes(32), DEVICE).open(NONCE, CIPHERTEXT)
    with pytest.raises(SealError):
        InstructionSealer(SECRET, DEVICE).open(NONCE[:8], CIPHERTEXT)


def test_repr_hides_key() -> None:
    assert SEALED["derived_key_hex"] not in repr(InstructionSealer(SECRET, DEVICE))
