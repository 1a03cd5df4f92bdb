"""Self-managed TLS for the webhook: a private CA and a serving certificate, rotated early.

Used when the chart doesn't hand the certificate to cert-manager. The CA's certificate goes
into the webhook configuration's ``caBundle``; the operator re-issues the serving
certificate (and, near its own expiry, the CA) well before they expire, so the API server
never sees an expired certificate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
SERVING_VALIDITY = dt.timedelta(days=365)
# Re-issue when less than this fraction of the validity is left.
RENEW_FRACTION = 1 / 3


@dataclass(frozen=True)
class CertBundle:
    """PEM-encoded CA certificate and key, serving certificate and key."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write ca.crt, tls.crt and tls.key (0600); returns the cert and key paths."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.crt").write_bytes(self.ca_cert)
        cert, key = directory / "tls.crt", directory / "tls.key"
        cert.write_bytes(self.cert)
        key.touch(mode=0o600)
        key.write_bytes(self.key)
        return cert, key


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def dns_names(service: str, namespace: str) -> list[str]:
    """The names the API server may use for a webhook Service."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]  # fmt: skip


def issue(
    names: list[str], now: dt.datetime | None = None, ca: tuple[bytes, bytes] | None = None
) -> CertBundle:
    """A serving certificate for ``names``, signed by ``ca`` (cert, key PEM) or a new CA."""
    now = now or dt.datetime.now(dt.UTC)
    if ca is None:
        ca_key = _key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clawdbot-webhook-ca")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
    else:
        ca_cert = x509.load_pem_x509_certificate(ca[0])
        loaded = serialization.load_pem_private_key(ca[1], password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError("the webhook CA key must be an EC key")
        ca_key = loaded
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + SERVING_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    return CertBundle(
        ca_cert=ca_cert.public_bytes(serialization.Encoding.PEM),
        ca_key=_pem_key(ca_key),
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=_pem_key(key),
    )


def needs_renewal(cert_pem: bytes, now: dt.datetime | None = None) -> bool:
    """True when less than a third of the certificate's validity is left."""
    now = now or dt.datetime.now(dt.UTC)
    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= end - (end - start) * RENEW_FRACTION


def rotate(
    bundle: CertBundle | None, names: list[str], now: dt.datetime | None = None
) -> CertBundle:
    """The bundle to serve from now on: the same one, a re-issued leaf, or a new CA and leaf."""
    if bundle is None or needs_renewal(bundle.ca_cert, now):
        return issue(names, now)
    if needs_renewal(bundle.cert, now):
        return issue(names, now, ca=(bundle.ca_cert, bundle.ca_key))
    return bundle
