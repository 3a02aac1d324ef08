"""docs/contract.md's SH1-HMAC-SHA256 request signature: one implementation for servers and client SDKs.

The signature covers the method, key id, timestamp, nonce and the SHA-256 of the request bytes exactly
as sent on the wire, so the server must verify over the raw bytes it received.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

SCHEME = "SH1-HMAC-SHA256"
SIGNATURE_PREFIX = "v1="
SECRET_PREFIX = "shs_"  # noqa: S105 - a format marker, not a secret
SECRET_BYTES = 32

HEADER_KEY_ID = "x-sh-key-id"
HEADER_TIMESTAMP = "x-sh-timestamp"
HEADER_NONCE = "x-sh-nonce"
HEADER_SIGNATURE = "x-sh-signature"
SIGNED_HEADERS = (HEADER_KEY_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
# The device stream open: its signature covers zero bytes.
CONNECT_METHOD = "/signalhub.v1.DeviceGateway/Connect"

_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# Unix seconds as ASCII digits and nothing else: str.isdigit() and int() would also take signs, spaces,
# underscores and other scripts' digits. Twelve digits reach far past any clock a signature comes from.
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_KEY_ID_MAX = 128


class AuthFailure(StrEnum):
    """The ``ErrorInfo.reason`` values of docs/contract.md for a failed signature."""

    SIGNATURE_MISSING = "SIGNATURE_MISSING"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    TIMESTAMP_SKEW = "TIMESTAMP_SKEW"
    NONCE_REPLAYED = "NONCE_REPLAYED"
    KEY_REVOKED = "KEY_REVOKED"


class SignatureError(Exception):
    """A signature check failed; ``reason`` is what the caller is told, ``detail`` is safe to show."""

    def __init__(self, reason: AuthFailure, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def generate_secret() -> tuple[str, bytes]:
    """A new HMAC secret: (the ``shs_`` form shown once, the 32 key bytes)."""
    raw = secrets.token_bytes(SECRET_BYTES)
    return format_secret(raw), raw


def format_secret(raw: bytes) -> str:
    return SECRET_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_secret(shown: str) -> bytes:
    """The 32 key bytes of a ``shs_`` secret; ValueError (without echoing it) when malformed."""
    if not shown.startswith(SECRET_PREFIX) or len(shown) != len(SECRET_PREFIX) + 43:
        raise ValueError("a secret is 'shs_' followed by 43 base64url characters")
    body = shown[len(SECRET_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=")
    except (binascii.Error, ValueError):
        raise ValueError("a secret is 'shs_' followed by 43 base64url characters") from None
    if len(raw) != SECRET_BYTES or format_secret(raw) != shown:
        raise ValueError("a secret is 'shs_' followed by 43 base64url characters")
    return raw


def new_nonce() -> str:
    """128 random bits as 22 base64url characters."""
    return secrets.token_urlsafe(16)


def canonical_string(method: str, key_id: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((SCHEME, method, key_id, str(timestamp), nonce, digest)).encode("utf-8")


def compute_signature(secret: bytes, method: str, key_id: str, timestamp: int, nonce: str, body: bytes) -> str:
    mac = hmac.new(secret, canonical_string(method, key_id, timestamp, nonce, body), hashlib.sha256)
    return SIGNATURE_PREFIX + base64.b64encode(mac.digest()).decode("ascii")


def signed_metadata(
    secret: bytes,
    method: str,
    key_id: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> tuple[tuple[str, str], ...]:
    """The four metadata entries a client sends with ``body`` (empty bytes for a stream open)."""
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = new_nonce() if nonce is None else nonce
    signature = compute_signature(secret, method, key_id, ts, nonce, body)
    return (
        (HEADER_KEY_ID, key_id),
        (HEADER_TIMESTAMP, str(ts)),
        (HEADER_NONCE, nonce),
        (HEADER_SIGNATURE, signature),
    )


@dataclass(frozen=True)
class SignedHeaders:
    key_id: str
    timestamp: int
    nonce: str
    signature: bytes  # the decoded HMAC


def parse_headers(metadata: Iterable[tuple[str, str | bytes]]) -> SignedHeaders:
    """Pick the signature headers out of call metadata: an absent one fails as SIGNATURE_MISSING, a
    malformed one (empty included) as SIGNATURE_INVALID; nothing else is ever raised."""
    found: dict[str, str] = {}
    for key, value in metadata:
        if key in SIGNED_HEADERS:
            if key in found or isinstance(value, bytes):
                raise SignatureError(AuthFailure.SIGNATURE_INVALID, f"{key} must be given once, as text")
            found[key] = value
    missing = [h for h in SIGNED_HEADERS if h not in found]
    if missing:
        raise SignatureError(AuthFailure.SIGNATURE_MISSING, "missing metadata: " + ", ".join(missing))
    empty = [h for h in SIGNED_HEADERS if not found[h]]
    if empty:
        raise SignatureError(AuthFailure.SIGNATURE_INVALID, "empty metadata: " + ", ".join(empty))
    key_id = found[HEADER_KEY_ID]
    if len(key_id) > _KEY_ID_MAX:
        raise SignatureError(AuthFailure.SIGNATURE_INVALID, f"{HEADER_KEY_ID} is too long")
    timestamp = parse_timestamp(found[HEADER_TIMESTAMP])
    nonce = found[HEADER_NONCE]
    if not _NONCE_RE.fullmatch(nonce):
        raise SignatureError(AuthFailure.SIGNATURE_INVALID, f"{HEADER_NONCE} must be 16-64 of [A-Za-z0-9_-]")
    raw_sig = found[HEADER_SIGNATURE]
    if not raw_sig.startswith(SIGNATURE_PREFIX):
        raise SignatureError(AuthFailure.SIGNATURE_INVALID, f"{HEADER_SIGNATURE} must start with 'v1='")
    try:
        mac = base64.b64decode(raw_sig[len(SIGNATURE_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(AuthFailure.SIGNATURE_INVALID, f"{HEADER_SIGNATURE} is not base64") from None
    if len(mac) != hashlib.sha256().digest_size:
        raise SignatureError(AuthFailure.SIGNATURE_INVALID, f"{HEADER_SIGNATURE} has the wrong length")
    return SignedHeaders(key_id=key_id, timestamp=timestamp, nonce=nonce, signature=mac)


def parse_timestamp(raw: str) -> int:
    """The ``x-sh-timestamp`` value as Unix seconds; SIGNATURE_INVALID unless it is 1-12 ASCII digits."""
    if not _TIMESTAMP_RE.fullmatch(raw):
        raise SignatureError(AuthFailure.SIGNATURE_INVALID, f"{HEADER_TIMESTAMP} must be Unix seconds in ASCII digits")
    return int(raw)


def check_timestamp(headers: SignedHeaders, now: float, tolerance_seconds: int) -> None:
    if abs(now - headers.timestamp) > tolerance_seconds:
        raise SignatureError(
            AuthFailure.TIMESTAMP_SKEW, f"timestamp is more than {tolerance_seconds} s from the server clock"
        )


def match_secret(headers: SignedHeaders, method: str, body: bytes, candidates: Sequence[bytes]) -> int | None:
    """Index of the candidate secret that produced the signature, or None.

    Every candidate is tried (no early exit) and compared in constant time.
    """
    matched: int | None = None
    message = canonical_string(method, headers.key_id, headers.timestamp, headers.nonce, body)
    for index, secret in enumerate(candidates):
        expected = hmac.new(secret, message, hashlib.sha256).digest()
        if hmac.compare_digest(expected, headers.signature) and matched is None:
            matched = index
    return matched
