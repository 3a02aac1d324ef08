"""TLS in tests: a certificate authority made by the test, a server certificate it signs for 127.0.0.1, ::1 and
localhost (written as the PEM files a server and a bridge are given), and a health check over TLS."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from backoffice.platform.config import ServerTls


@dataclass(frozen=True)
class ServerIdentity:
    """A server's PEM files and the CA certificate a client trusts them by."""

    ca_certificate: Path
    certificate_chain: Path
    private_key: Path

    def settings(self, server: str, *, required: bool = False) -> ServerTls:
        return ServerTls(server, self.certificate_chain, self.private_key, required)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_server_identity(directory: Path, label: str = "test") -> ServerIdentity:
    """A new CA and a loopback server certificate it signs, under ``directory`` (the key file mode 0600)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"signalhub {label} CA"))
        .issuer_name(_name(f"signalhub {label} CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    identity = ServerIdentity(
        ca_certificate=directory / f"{label}-ca.pem",
        certificate_chain=directory / f"{label}-server.pem",
        private_key=directory / f"{label}-server.key",
    )
    identity.ca_certificate.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    identity.certificate_chain.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    identity.private_key.touch(mode=0o600)
    identity.private_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return identity
