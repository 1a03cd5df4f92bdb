"""The operator's serving certificate: one private CA and one leaf for every TLS server the
operator runs (the injection webhook, the discovery stream, the external metrics API).

Used when the chart doesn't hand the certificate to cert-manager. The leaf names every
Service in front of those servers; the CA's certificate goes into the ``caBundle`` of the
webhook configuration and of the metrics APIService (so the API server verifies both, with
no ``insecureSkipTLSVerify``) and into every injected sidecar (to verify the discovery
stream). The leaf is re-issued well before it expires and whenever it no longer names every
Service (an upgrade that adds one), from the same CA, so the published bundles stay valid;
the CA itself is replaced near its own expiry.

``ServingCertificates`` keeps the certificate in one Secret shared by the replicas (or in
memory for a single local process, or reads it from a directory cert-manager fills) and
publishes the CA; ``issue``/``rotate`` are the pure parts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import logging
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clawdbot_operator.kube import Kube, KubeError, Obj

log = logging.getLogger("clawdbot.operator.certs")

CA_VALIDITY = dt.timedelta(days=3650)
SERVING_VALIDITY = dt.timedelta(days=365)
# Re-issue when less than this fraction of the validity is left.
RENEW_FRACTION = 1 / 3
# Tries to set up certificates at start while the API server is unavailable (~1 minute).
START_ATTEMPTS = 10
# How often certificates are checked for renewal (and the CA bundles re-published).
CERT_CHECK_S = 6 * 3600.0
# A CA bundle that could not be published yet (its object does not exist yet, or the API
# server refused) is retried this soon, doubling up to CERT_CHECK_S: an out-of-order install
# must not leave the API server distrusting the operator for hours.
PUBLISH_RETRY_S = 10.0
# Rounds of read-issue-write when another replica keeps writing the Secret in between.
SECRET_WRITE_ATTEMPTS = 3

WEBHOOK_API: Final = "admissionregistration.k8s.io/v1"
APISERVICE_API: Final = "apiregistration.k8s.io/v1"
SECRET_KEYS: Final = ("ca.crt", "ca.key", "tls.crt", "tls.key")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any] | None) -> CertBundle | None:
        """The bundle a Secret holds, or None when it lacks one of its four keys."""
        data = (secret or {}).get("data") or {}
        if not set(SECRET_KEYS) <= set(data):
            return None
        raw = {k: base64.b64decode(data[k]) for k in SECRET_KEYS}
        return cls(raw["ca.crt"], raw["ca.key"], raw["tls.crt"], raw["tls.key"])

    def secret_data(self) -> dict[str, str]:
        """The Secret ``data`` that holds this bundle."""
        return {
            "ca.crt": _b64(self.ca_cert),
            "ca.key": _b64(self.ca_key),
            "tls.crt": _b64(self.cert),
            "tls.key": _b64(self.key),
        }


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """Subject alternative names: IP addresses as such, everything else as DNS names."""
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def dns_names(service: str, namespace: str) -> list[str]:
    """The names a client in the cluster (the API server among them) may use for a Service."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]  # fmt: skip


def service_names(services: Sequence[str], namespace: str, *extra: str) -> list[str]:
    """The names of every Service (empty ones skipped, no duplicates), then ``extra``."""
    names: list[str] = []
    for service in services:
        if service:
            names += [n for n in dns_names(service, namespace) if n not in names]
    return [*names, *(n for n in extra if n not in names)]


def _common_name(name: str) -> x509.Name:
    # A subject CN is limited to 64 characters; the SANs carry every name in full.
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])


def issue(
    names: Sequence[str], now: dt.datetime | None = None, ca: tuple[bytes, bytes] | None = None
) -> CertBundle:
    """A serving certificate for ``names``, signed by ``ca`` (cert, key PEM) or a new CA."""
    now = now or dt.datetime.now(dt.UTC)
    if ca is None:
        ca_key = _key()
        ca_name = _common_name("clawdbot-serving-ca")
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
            raise ValueError("the serving CA key must be an EC key")
        ca_key = loaded
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_common_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + SERVING_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    return CertBundle(
        ca_cert=ca_cert.public_bytes(serialization.Encoding.PEM),
        ca_key=_pem_key(ca_key),
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=_pem_key(key),
    )


def self_signed(directory: Path, hosts: Sequence[str]) -> tuple[Path, Path]:
    """A self-signed leaf for ``hosts`` (its own issuer, so a client can trust it directly:
    tests hand it to an APIService as its caBundle); writes tls.crt and tls.key (0600)."""
    key = _key()
    subject = _common_name(hosts[0])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + SERVING_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(_pem_key(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def needs_renewal(cert_pem: bytes, now: dt.datetime | None = None) -> bool:
    """True when less than a third of the certificate's validity is left."""
    now = now or dt.datetime.now(dt.UTC)
    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= end - (end - start) * RENEW_FRACTION


def names_of(cert_pem: bytes) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*sans.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))}  # fmt: skip


def rotate(
    bundle: CertBundle | None, names: Sequence[str], now: dt.datetime | None = None
) -> CertBundle:
    """The bundle to serve from now on: the same one, a re-issued leaf (near expiry, or
    missing one of ``names``), or a new CA and leaf (near the CA's expiry)."""
    if bundle is None or needs_renewal(bundle.ca_cert, now):
        return issue(names, now)
    if needs_renewal(bundle.cert, now) or not set(names) <= names_of(bundle.cert):
        return issue(names, now, ca=(bundle.ca_cert, bundle.ca_key))
    return bundle


class ServingCertificates:
    """The serving certificate of every TLS server of one operator process.

    Where it comes from, in order: ``cert_dir`` (tls.crt/tls.key/ca.crt written by
    cert-manager, whose CA injector publishes the CA); the Secret ``secret`` in ``namespace``
    (self-issued and shared by the replicas: the first one creates it, the others read it;
    owned by ``owner_references`` so it goes when they do); else self-issued in memory (one
    local process). A self-issued CA is published into the caBundle of every webhook of the
    MutatingWebhookConfiguration ``webhook_configuration`` and of the APIService
    ``api_service`` (empty names: nothing to publish).

    ``server_ssl()`` is one SSL context for every HTTPS server: a renewed certificate is
    loaded into it, so running servers hand it out on their next handshake; ``version``
    counts the changes (the gRPC server asks for the new certificate by it).
    """

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        names: Sequence[str],
        *,
        cert_dir: str = "",
        secret: str = "",
        webhook_configuration: str = "",
        api_service: str = "",
        owner_references: Sequence[Obj] = (),
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.names = list(names)
        self.cert_dir = cert_dir
        self.secret = secret
        self.webhook_configuration = "" if cert_dir else webhook_configuration
        self.api_service = "" if cert_dir else api_service
        self.owner_references = [dict(o) for o in owner_references]
        self.bundle: CertBundle | None = None
        self.version = 0
        self._ssl: ssl.SSLContext | None = None
        # Contexts of servers that need one of their own (the metrics API asks clients for
        # certificates): each gets the renewed certificate too.
        self._own: list[ssl.SSLContext] = []
        self._tls_dir = Path(tempfile.mkdtemp(prefix="clawdbot-tls-"))
        self._task: asyncio.Task[None] | None = None
        self._published = False

    # -- the certificate ----------------------------------------------------------------

    async def ensure(self) -> bool:
        """Load, issue or renew the certificate, then publish its CA; True when it changed."""
        if self.cert_dir:
            d = Path(self.cert_dir)
            fresh = CertBundle(
                ca_cert=(d / "ca.crt").read_bytes(),
                ca_key=b"",
                cert=(d / "tls.crt").read_bytes(),
                key=(d / "tls.key").read_bytes(),
            )
        elif self.secret:
            fresh = await self._secret_bundle()
        else:
            fresh = rotate(self.bundle, self.names)
        changed = fresh != self.bundle
        self.bundle = fresh
        if changed:
            cert, key = fresh.write(self._tls_dir)
            # Running servers take the new certificate on their next handshake.
            for context in [self._ssl, *self._own]:
                if context is not None:
                    context.load_cert_chain(cert, key)
            self.version += 1
        self._published = await self.publish(fresh.ca_cert)
        return changed

    async def _secret_bundle(self) -> CertBundle:
        """The bundle in the Secret, issued or renewed first when needed. Writes are a create
        or a replace of the version read, so of two replicas starting together one writes
        and the other reads what it wrote: both serve, and publish, the same CA."""
        for _ in range(SECRET_WRITE_ATTEMPTS):
            secret = await self.kube.get("v1", "Secret", self.namespace, self.secret)
            current = CertBundle.from_secret(secret)
            fresh = rotate(current, self.names)
            try:
                if fresh is current and current is not None and secret is not None:
                    await self._adopt(secret)
                    return current
                if secret is None:
                    await self.kube.create(self._secret_manifest(fresh))
                else:
                    await self.kube.replace(self._secret_manifest(fresh, secret))
            except KubeError as exc:
                if exc.status == 409:  # another replica wrote it first: use theirs
                    continue
                raise
            log.info("issued the serving certificate into Secret %s/%s", self.namespace,
                     self.secret)  # fmt: skip
            return fresh
        raise KubeError(409, f"Secret {self.namespace}/{self.secret} kept changing; retrying")

    def _secret_manifest(self, bundle: CertBundle, current: Obj | None = None) -> Obj:
        meta: Obj = dict((current or {}).get("metadata") or {})
        meta.update({"name": self.secret, "namespace": self.namespace})
        if self.owner_references:
            meta["ownerReferences"] = _merge_owners(meta.get("ownerReferences"),
                                                    self.owner_references)  # fmt: skip
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": (current or {}).get("type", "kubernetes.io/tls"),
            "data": bundle.secret_data(),
        }

    async def _adopt(self, secret: Obj) -> None:
        """Give a Secret written before owners were known (an older operator) its owners."""
        owners = (secret.get("metadata") or {}).get("ownerReferences")
        merged = _merge_owners(owners, self.owner_references)
        if merged == (owners or []):
            return
        await self.kube.replace(
            {**secret, "metadata": {**secret["metadata"], "ownerReferences": merged}}
        )

    # -- publishing the CA --------------------------------------------------------------

    async def publish(self, ca: bytes) -> bool:
        """Put ``ca`` into the caBundle of the webhook configuration and the APIService;
        False when one of them could not be updated yet (retried soon)."""
        done = True
        for target in (self._publish_webhooks, self._publish_api_service):
            try:
                done = await target(_b64(ca)) and done
            except KubeError as exc:
                log.warning("cannot publish the CA bundle: %s", exc)
                done = False
        return done

    async def _publish_webhooks(self, bundle: str) -> bool:
        name = self.webhook_configuration
        if not name:
            return True
        current = await self.kube.get(WEBHOOK_API, "MutatingWebhookConfiguration", "", name)
        if current is None:
            log.info("no webhook configuration %s yet; its caBundle is set when it exists", name)
            return False
        hooks = current.get("webhooks") or []
        if all((w.get("clientConfig") or {}).get("caBundle") == bundle for w in hooks):
            return True
        await self.kube.apply(
            {
                "apiVersion": WEBHOOK_API,
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": name},
                "webhooks": [
                    {"name": w["name"], "clientConfig": {"caBundle": bundle}} for w in hooks
                ],
            }
        )
        log.info("caBundle of %s set (%d webhooks)", name, len(hooks))
        return True

    async def _publish_api_service(self, bundle: str) -> bool:
        name = self.api_service
        if not name:
            return True
        current = await self.kube.get(APISERVICE_API, "APIService", "", name)
        if current is None:
            log.info("no APIService %s yet; its caBundle is set when it exists", name)
            return False
        spec = current.get("spec") or {}
        if spec.get("caBundle") == bundle:
            return True
        if spec.get("insecureSkipTLSVerify"):
            # The API server rejects a caBundle beside it; whoever set it chose no checks.
            log.warning("APIService %s skips TLS verification; its caBundle is left alone", name)
            return True
        await self.kube.apply(
            {
                "apiVersion": APISERVICE_API,
                "kind": "APIService",
                "metadata": {"name": name},
                "spec": {"caBundle": bundle},
            }
        )
        log.info("caBundle of APIService %s set", name)
        return True

    # -- serving and renewal ------------------------------------------------------------

    def server_ssl(self, *, own: bool = False) -> ssl.SSLContext:
        """The SSL context the operator's HTTPS servers serve with; ``own``: a new one for
        a server that configures it further (client certificates), kept renewed as well."""
        if self.bundle is None:
            raise RuntimeError("ServingCertificates.start() must run before the servers")
        if own or self._ssl is None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._tls_dir / "tls.crt", self._tls_dir / "tls.key")
            if own:
                self._own.append(context)
                return context
            self._ssl = context
        return self._ssl

    async def start(self) -> None:
        """The certificate (retried while the API server starts up), then the renewal loop;
        calling it again does nothing."""
        if self._task is not None:
            return
        delay = 0.5
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await self.ensure()
                break
            except KubeError as exc:
                # A starting control plane answers 429 "storage is (re)initializing".
                if attempt == START_ATTEMPTS or not (exc.status in (409, 429) or exc.status >= 500):
                    raise
                log.warning("certificates: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
        self._task = asyncio.create_task(self._renew(), name="serving-certificates")

    async def _renew(self) -> None:
        retry = PUBLISH_RETRY_S
        while True:
            if self._published:
                retry = PUBLISH_RETRY_S
                await asyncio.sleep(CERT_CHECK_S)
            else:
                await asyncio.sleep(retry)
                retry = min(retry * 2, CERT_CHECK_S)
            try:
                if await self.ensure():
                    log.info("serving certificate renewed; new connections use it")
            except (KubeError, OSError, ValueError) as exc:
                self._published = False
                log.warning("certificate renewal failed, retrying later: %s", exc)

    async def stop(self) -> None:
        """End the renewal loop (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _merge_owners(current: Any, wanted: Sequence[Obj]) -> list[Obj]:
    """``current`` owner references plus those of ``wanted`` it lacks (matched by uid)."""
    merged: list[Obj] = [dict(o) for o in current or []]
    uids = {o.get("uid") for o in merged}
    return merged + [dict(o) for o in wanted if o.get("uid") not in uids]
