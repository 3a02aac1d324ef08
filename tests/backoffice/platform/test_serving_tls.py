"""A server serving TLS from a certificate chain and private key (PEM files): the back office on a real
channel, and the one-line errors for files it cannot use, which never show the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from backoffice import bootstrap
from backoffice.bootstrap import Resources
from backoffice.platform.config import ServerTls
from backoffice.platform.serving import TlsUnavailable, server_credentials
from signalhub.protocol.wire import is_loopback
from tests.conftest import health, serving
from tests.tls import ServerIdentity, make_server_identity


@pytest.fixture
def identity(tmp_path: Path) -> ServerIdentity:
    return make_server_identity(tmp_path / "tls")


async def test_the_back_office_serves_tls_to_clients_that_trust_its_ca(
    res: Resources, identity: ServerIdentity, tmp_path: Path
) -> None:
    settings = dataclasses.replace(res.settings, backoffice_tls=identity.settings("BACKOFFICE"))
    async with serving(bootstrap.build_server(dataclasses.replace(res, settings=settings), "127.0.0.1:0")) as server:
        assert server.tls
        ca = identity.ca_certificate.read_bytes()
        assert await health(server.bound_address, tls=True, root_certificates=ca) == "SERVING"
        # Plaintext, gRPC's default roots and another CA all fail: the channel above really was TLS.
        assert (await health(server.bound_address, deadline=2.0)).startswith("unreachable")
        assert (await health(server.bound_address, tls=True, root_certificates=None)).startswith("unreachable")
        stranger = make_server_identity(tmp_path / "other", "other").ca_certificate.read_bytes()
        assert (await health(server.bound_address, tls=True, root_certificates=stranger)).startswith("unreachable")


async def test_without_a_certificate_the_back_office_stays_plaintext(res: Resources) -> None:
    async with serving(bootstrap.build_server(res, "127.0.0.1:0")) as server:
        assert not server.tls
        assert await health(server.bound_address, deadline=2.0) == "SERVING"


def _refusal(tls: ServerTls) -> str:
    with pytest.raises(TlsUnavailable) as info:
        server_credentials(tls)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_files_it_cannot_use_are_one_line_that_never_shows_the_key(identity: ServerIdentity, tmp_path: Path) -> None:
    key_text = identity.private_key.read_text()
    key_body = key_text.splitlines()[1]
    missing = ServerTls("GATEWAY", identity.certificate_chain, tmp_path / "absent.key")
    assert "SIGNALHUB_GATEWAY_TLS_KEY: cannot read" in _refusal(missing)

    # The key given as the certificate (an easy slip): refused, and the key is not quoted back.
    swapped = ServerTls("GATEWAY", identity.private_key, identity.certificate_chain)
    message = _refusal(swapped)
    assert message.startswith("SIGNALHUB_GATEWAY_TLS_CERT:") and "no PEM certificate" in message
    assert key_body not in message

    garbage = tmp_path / "garbage.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    assert "holds no PEM private key" in _refusal(ServerTls("GATEWAY", identity.certificate_chain, garbage))

    other = make_server_identity(tmp_path / "other", "other")
    message = _refusal(ServerTls("GATEWAY", identity.certificate_chain, other.private_key))
    assert "is not the key of the first certificate" in message
    assert other.private_key.read_text().splitlines()[1] not in message

    private_key = serialization.load_pem_private_key(identity.private_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    assert "is encrypted" in _refusal(ServerTls("BACKOFFICE", identity.certificate_chain, encrypted))


def test_a_server_that_requires_tls_refuses_plaintext(identity: ServerIdentity) -> None:
    message = _refusal(ServerTls("BACKOFFICE", required=True))
    assert message == (
        "SIGNALHUB_BACKOFFICE_REQUIRE_TLS is set, but SIGNALHUB_BACKOFFICE_TLS_CERT and "
        "SIGNALHUB_BACKOFFICE_TLS_KEY are not: refusing to serve plaintext"
    )
    assert server_credentials(ServerTls("BACKOFFICE")) is None
    assert server_credentials(identity.settings("BACKOFFICE", required=True)) is not None


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50052", True),
        ("127.8.9.10:1", True),
        ("[::1]:50052", True),
        ("localhost:50052", True),
        ("LOCALHOST:50052", True),
        ("0.0.0.0:50052", False),
        ("[::]:50052", False),
        ("10.0.0.5:50052", False),
        ("gateway.example.com:50052", False),
        (":50052", False),
    ],
)
def test_which_listen_addresses_stay_on_this_machine(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback
