"""SH1-HMAC-SHA256 against the contract's independent vectors, and every way a signature can be wrong."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from signalhub.protocol import signing
from signalhub.protocol.signing import AuthFailure, SignatureError
from tests.conftest import CONTRACT_VECTORS as VECTORS
from tests.hostile import HUNT, TIMESTAMP_HEADERS, timestamp_headers

SIG = VECTORS["signature"]
SECRET = bytes.fromhex(VECTORS["secret_bytes_hex"])
BODY = bytes.fromhex(SIG["body_hex"])
CONNECT = "/signalhub.v1.DeviceGateway/Connect"


def test_secret_shown_form_round_trips_the_vector() -> None:
    assert signing.parse_secret(VECTORS["secret_shown"]) == SECRET
    assert signing.format_secret(SECRET) == VECTORS["secret_shown"]


@pytest.mark.parametrize(
    "bad",
    ["", "shs_", "sht_" + "A" * 43, "shs_" + "A" * 42, "shs_" + "A" * 44, "shs_" + "!" * 43, "shs_" + "A" * 42 + "B"],
)
def test_malformed_secret_is_refused_without_echo(bad: str) -> None:
    with pytest.raises(ValueError, match="43 base64url") as info:
        signing.parse_secret(bad)
    assert len(bad) < 20 or bad not in str(info.value)


def test_generated_secret_is_32_random_bytes() -> None:
    shown, raw = signing.generate_secret()
    assert len(raw) == 32 and len(shown) == 47 and signing.parse_secret(shown) == raw
    assert signing.generate_secret()[1] != raw


def test_canonical_string_matches_vector() -> None:
    assert (
        signing.canonical_string(SIG["method"], SIG["key_id"], SIG["timestamp"], SIG["nonce"], BODY)
        == SIG["canonical_string"].encode()
    )


def test_signature_matches_vector() -> None:
    value = signing.compute_signature(SECRET, SIG["method"], SIG["key_id"], SIG["timestamp"], SIG["nonce"], BODY)
    assert value == SIG["x_sh_signature"]


def test_connect_signature_over_zero_bytes_matches_vector() -> None:
    value = signing.compute_signature(SECRET, CONNECT, SIG["key_id"], SIG["timestamp"], SIG["nonce"], b"")
    assert value == SIG["connect_x_sh_signature_same_key_ts_nonce"]


def _vector_metadata(**changes: str) -> list[tuple[str, str]]:
    md = {
        "x-sh-key-id": SIG["key_id"],
        "x-sh-timestamp": str(SIG["timestamp"]),
        "x-sh-nonce": SIG["nonce"],
        "x-sh-signature": SIG["x_sh_signature"],
    }
    md.update(changes)
    return list(md.items())


def test_vector_headers_verify() -> None:
    headers = signing.parse_headers(_vector_metadata())
    assert signing.match_secret(headers, SIG["method"], BODY, [SECRET]) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("x-sh-key-id", "0b6f4a8e-3c55-4d7e-9a43-2f1e8c1d7b91"),
        ("x-sh-timestamp", str(SIG["timestamp"] + 1)),
        ("x-sh-nonce", SIG["nonce"][:-1] + "X"),
        ("x-sh-signature", "v1=" + "A" * 43 + "="),
    ],
)
def test_each_tampered_header_fails(field: str, value: str) -> None:
    headers = signing.parse_headers(_vector_metadata(**{field: value}))
    assert signing.match_secret(headers, SIG["method"], BODY, [SECRET]) is None


def test_tampered_body_method_or_secret_fails() -> None:
    headers = signing.parse_headers(_vector_metadata())
    assert signing.match_secret(headers, SIG["method"], BODY + b"\x00", [SECRET]) is None
    assert signing.match_secret(headers, "/signalhub.v1.SignalService/CancelSignal", BODY, [SECRET]) is None
    assert signing.match_secret(headers, SIG["method"], BODY, [bytes(32)]) is None


def test_second_candidate_secret_is_found() -> None:
    headers = signing.parse_headers(_vector_metadata())
    assert signing.match_secret(headers, SIG["method"], BODY, [bytes(32), SECRET]) == 1


@pytest.mark.parametrize("missing", signing.SIGNED_HEADERS)
def test_missing_header_is_signature_missing(missing: str) -> None:
    md = [(k, v) for k, v in _vector_metadata() if k != missing]
    with pytest.raises(SignatureError) as info:
        signing.parse_headers(md)
    assert info.value.reason is AuthFailure.SIGNATURE_MISSING


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("x-sh-timestamp", "12.5"),
        ("x-sh-timestamp", "soon"),
        ("x-sh-timestamp", ""),
        ("x-sh-key-id", ""),
        ("x-sh-nonce", ""),
        ("x-sh-signature", ""),
        ("x-sh-nonce", "a-nonce-with-a-newline\n"),
        ("x-sh-nonce", "short"),
        ("x-sh-nonce", "has spaces in the nonce!!"),
        ("x-sh-nonce", "n" * 65),
        ("x-sh-signature", "v2=" + SIG["x_sh_signature"][3:]),
        ("x-sh-signature", "v1=not base64"),
        ("x-sh-signature", "v1=AAAA"),
    ],
)
def test_malformed_header_is_signature_invalid(field: str, value: str) -> None:
    with pytest.raises(SignatureError) as info:
        signing.parse_headers(_vector_metadata(**{field: value}))
    assert info.value.reason is AuthFailure.SIGNATURE_INVALID


@pytest.mark.parametrize("value", TIMESTAMP_HEADERS)
def test_timestamp_that_is_not_ascii_digits_is_signature_invalid(value: str) -> None:
    with pytest.raises(SignatureError) as info:
        signing.parse_headers(_vector_metadata(**{"x-sh-timestamp": value}))
    assert info.value.reason is AuthFailure.SIGNATURE_INVALID


@pytest.mark.parametrize("value", ["0", "0000000005", "9" * 12])
def test_well_formed_timestamp_outside_the_window_is_skew(value: str) -> None:
    headers = signing.parse_headers(_vector_metadata(**{"x-sh-timestamp": value}))
    assert headers.timestamp == int(value)
    with pytest.raises(SignatureError) as info:
        signing.check_timestamp(headers, SIG["timestamp"], 300)
    assert info.value.reason is AuthFailure.TIMESTAMP_SKEW


# A pure function: the hunt can afford many more examples here than against a server.
@settings(HUNT, max_examples=HUNT.max_examples * 20)
@given(value=timestamp_headers())
def test_any_timestamp_text_is_ascii_digits_or_signature_invalid(value: str) -> None:
    metadata = _vector_metadata(**{"x-sh-timestamp": value})
    if value.isascii() and value.isdigit() and len(value) <= 12:
        assert signing.parse_headers(metadata).timestamp == int(value)
    else:
        with pytest.raises(SignatureError) as info:
            signing.parse_headers(metadata)
        assert info.value.reason is AuthFailure.SIGNATURE_INVALID


def test_repeated_header_is_signature_invalid() -> None:
    md = [*_vector_metadata(), ("x-sh-nonce", "another-nonce-value-123")]
    with pytest.raises(SignatureError) as info:
        signing.parse_headers(md)
    assert info.value.reason is AuthFailure.SIGNATURE_INVALID


@pytest.mark.parametrize("offset", [-301, 301])
def test_timestamp_outside_tolerance_is_skew(offset: int) -> None:
    headers = signing.parse_headers(_vector_metadata())
    with pytest.raises(SignatureError) as info:
        signing.check_timestamp(headers, SIG["timestamp"] + offset, 300)
    assert info.value.reason is AuthFailure.TIMESTAMP_SKEW


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamp_inside_tolerance_passes(offset: int) -> None:
    signing.check_timestamp(signing.parse_headers(_vector_metadata()), SIG["timestamp"] + offset, 300)


def test_signed_metadata_verifies_and_uses_fresh_nonces() -> None:
    first = signing.signed_metadata(SECRET, SIG["method"], SIG["key_id"], BODY)
    second = signing.signed_metadata(SECRET, SIG["method"], SIG["key_id"], BODY)
    headers = signing.parse_headers(first)
    assert signing.match_secret(headers, SIG["method"], BODY, [SECRET]) == 0
    assert dict(first)["x-sh-nonce"] != dict(second)["x-sh-nonce"]
    assert len(dict(first)["x-sh-nonce"]) >= 22  # 128 random bits
