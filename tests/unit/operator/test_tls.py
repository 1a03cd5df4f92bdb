"""The operator's one serving certificate: issued into a Secret the replicas share, its CA
published into the webhook configuration and the metrics APIService, served by the webhook
and the metrics API alike (real TLS handshakes on loopback)."""

from __future__ import annotations

import asyncio
import base64
import copy
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from cryptography import x509

from clawdbot_operator import main as operator_main
from clawdbot_operator import manager, metrics_api, tls
from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.kube import Kube, KubeError, Obj
from clawdbot_operator.leader import LeaderElector
from clawdbot_operator.loadreports import LoadReportStore
from clawdbot_operator.metrics_auth import Access, MetricsAuth, User

NS = "clawdbot-system"
WEBHOOKS = "clawdbot-sidecar-injector"
APISERVICE = "v1beta1.external.metrics.k8s.io"
SECRET = "clawdbot-serving-cert"
OWNER = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "clawdbot", "uid": "u-1"}
NAMES = tls.service_names(
    ["clawdbot-webhook", "clawdbot-discovery", "clawdbot-metrics"], NS, "localhost"
)


def _merge(current: Any, patch: Any) -> Any:
    """Server-side apply, as far as these objects need it: maps merge, lists of named
    items merge by name."""
    if isinstance(current, dict) and isinstance(patch, dict):
        out = dict(current)
        for k, v in patch.items():
            out[k] = _merge(current.get(k), v)
        return out
    named = isinstance(current, list) and isinstance(patch, list)
    if named and all(isinstance(i, dict) and "name" in i for i in current + patch):
        by_name = {i["name"]: i for i in current}
        for item in patch:
            by_name[item["name"]] = _merge(by_name.get(item["name"]), item)
        return list(by_name.values())
    return copy.deepcopy(patch)


class FakeKube(Kube):
    """Objects by (kind, namespace, name) with the API server's optimistic concurrency."""

    def __init__(self) -> None:
        self.field_manager = "test"
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.version = 0
        self.refuse: dict[str, int] = {}  # kind -> status every write of it answers

    @staticmethod
    def _key(obj: Obj) -> tuple[str, str, str]:
        meta = obj["metadata"]
        return obj["kind"], meta.get("namespace", ""), meta["name"]

    def _store(self, obj: Obj) -> Obj:
        if obj["kind"] in self.refuse:
            raise KubeError(self.refuse[obj["kind"]], f"{obj['kind']} refused")
        self.version += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[self._key(stored)] = stored
        return copy.deepcopy(stored)

    def put(self, obj: Obj) -> None:
        self._store(obj)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        await asyncio.sleep(0)  # a racing replica reads too
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    async def create(self, manifest: Obj) -> Obj:
        if self._key(manifest) in self.objects:
            raise KubeError(409, "AlreadyExists")
        return self._store(manifest)

    async def replace(self, manifest: Obj) -> Obj:
        current = self.objects.get(self._key(manifest))
        if current is None:
            raise KubeError(404, "NotFound")
        if manifest["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise KubeError(409, "Conflict")
        return self._store(manifest)

    async def apply(self, manifest: Obj) -> Obj:
        current = self.objects.get(self._key(manifest))
        if current is None:
            raise KubeError(422, "the test never creates by apply")
        return self._store(_merge(current, manifest))

    def obj(self, kind: str, name: str, namespace: str = "") -> Obj:
        return self.objects[kind, namespace, name]


def webhook_configuration() -> Obj:
    hook = {"clientConfig": {"service": {"name": "clawdbot-webhook", "namespace": NS}}}
    return {
        "apiVersion": tls.WEBHOOK_API,
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOKS},
        "webhooks": [{"name": "namespace.inject.clawdbot.io", **copy.deepcopy(hook)},
                     {"name": "pod.inject.clawdbot.io", **copy.deepcopy(hook)}],
    }  # fmt: skip


def api_service(**spec: Any) -> Obj:
    return {
        "apiVersion": tls.APISERVICE_API,
        "kind": "APIService",
        "metadata": {"name": APISERVICE},
        "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1",
                 "service": {"name": "clawdbot-metrics", "namespace": NS, "port": 443}, **spec},
    }  # fmt: skip


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    k.put(webhook_configuration())
    k.put(api_service())
    return k


def replica(kube: Kube, names: list[str] | None = None, **kw: Any) -> tls.ServingCertificates:
    options: dict[str, Any] = {
        "secret": SECRET,
        "webhook_configuration": WEBHOOKS,
        "api_service": APISERVICE,
        "owner_references": [OWNER],
        **kw,
    }
    return tls.ServingCertificates(kube, NS, names or NAMES, **options)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_issue_names_ip_addresses_as_such() -> None:
    bundle = tls.issue(["svc.ns.svc", "localhost", "127.0.0.1", "::1"])
    cert = x509.load_pem_x509_certificate(bundle.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["svc.ns.svc", "localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert tls.names_of(bundle.cert) == {"svc.ns.svc", "localhost", "127.0.0.1", "::1"}


def test_a_leaf_missing_a_name_is_reissued_from_the_same_ca() -> None:
    """An upgrade that adds the metrics Service must not change the published CA."""
    old = tls.issue(tls.service_names(["clawdbot-webhook"], NS, "localhost"))
    new = tls.rotate(old, NAMES)
    assert new.ca_cert == old.ca_cert and new.cert != old.cert
    assert set(NAMES) <= tls.names_of(new.cert)
    assert tls.rotate(new, NAMES) is new  # every name covered: kept as it is


def test_service_names_skip_disabled_services_and_duplicates() -> None:
    names = tls.service_names(["a", "", "a"], "ns", "localhost", "a.ns.svc")
    assert names == ["a", "a.ns", "a.ns.svc", "a.ns.svc.cluster.local", "localhost"]


def test_self_signed_is_its_own_issuer(tmp_path: Path) -> None:
    cert_path, key_path = tls.self_signed(tmp_path, ["localhost", "127.0.0.1"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.issuer == cert.subject
    assert key_path.stat().st_mode & 0o077 == 0
    # The metrics module keeps the name its callers use.
    (tmp_path / "m").mkdir()
    other, _ = metrics_api.self_signed(tmp_path / "m", ["x.ns.svc"])
    assert tls.names_of(other.read_bytes()) == {"x.ns.svc"}


async def test_the_first_replica_issues_into_the_secret_and_publishes_the_ca(
    kube: FakeKube,
) -> None:
    first = replica(kube)
    assert await first.ensure() is True
    assert first.bundle is not None
    secret = kube.obj("Secret", SECRET, NS)
    assert tls.CertBundle.from_secret(secret) == first.bundle
    assert secret["type"] == "kubernetes.io/tls"
    # Owned by the operator's Deployment: the garbage collector deletes it on uninstall.
    assert secret["metadata"]["ownerReferences"] == [OWNER]
    ca = b64(first.bundle.ca_cert)
    hooks = kube.obj("MutatingWebhookConfiguration", WEBHOOKS)["webhooks"]
    assert [h["clientConfig"]["caBundle"] for h in hooks] == [ca, ca]
    assert hooks[0]["clientConfig"]["service"]["name"] == "clawdbot-webhook"  # untouched
    assert kube.obj("APIService", APISERVICE)["spec"]["caBundle"] == ca
    assert set(NAMES) <= tls.names_of(first.bundle.cert)

    # Nothing changed: no write at all on the next check.
    version = kube.version
    assert await first.ensure() is False
    assert kube.version == version


async def test_replicas_starting_together_serve_and_publish_one_ca(kube: FakeKube) -> None:
    replicas = [replica(kube) for _ in range(3)]
    await asyncio.gather(*(r.ensure() for r in replicas))
    bundles = {r.bundle for r in replicas}
    assert len(bundles) == 1
    (bundle,) = bundles
    assert bundle is not None
    assert tls.CertBundle.from_secret(kube.obj("Secret", SECRET, NS)) == bundle
    assert kube.obj("APIService", APISERVICE)["spec"]["caBundle"] == b64(bundle.ca_cert)


async def test_an_older_secret_gets_the_new_names_and_its_owner_keeps_its_ca(
    kube: FakeKube,
) -> None:
    old = tls.issue(tls.service_names(["clawdbot-webhook"], NS, "localhost"))
    kube.put({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": SECRET, "namespace": NS},
              "data": old.secret_data()})  # fmt: skip
    upgraded = replica(kube)
    await upgraded.ensure()
    assert upgraded.bundle is not None and upgraded.bundle.ca_cert == old.ca_cert
    secret = kube.obj("Secret", SECRET, NS)
    assert tls.CertBundle.from_secret(secret) == upgraded.bundle
    assert secret["metadata"]["ownerReferences"] == [OWNER]

    # A current Secret written before owners were known is only given its owner.
    kube.objects.pop(("Secret", NS, SECRET))
    kube.put({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": SECRET, "namespace": NS},
              "data": upgraded.bundle.secret_data()})  # fmt: skip
    again = replica(kube)
    assert await again.ensure() is True  # a new process: its first certificate
    secret = kube.obj("Secret", SECRET, NS)
    assert tls.CertBundle.from_secret(secret) == upgraded.bundle
    assert secret["metadata"]["ownerReferences"] == [OWNER]


async def test_publishing_waits_for_missing_objects_and_respects_skip_verify() -> None:
    kube = FakeKube()
    plain = replica(kube)
    await plain.ensure()
    assert plain._published is False  # neither object exists yet: retried soon
    kube.put(webhook_configuration())
    kube.put(api_service(insecureSkipTLSVerify=True))
    await plain.ensure()
    assert plain._published is True
    assert "caBundle" not in kube.obj("APIService", APISERVICE)["spec"]  # the API forbids both
    assert plain.bundle is not None
    ca = b64(plain.bundle.ca_cert)
    hooks = kube.obj("MutatingWebhookConfiguration", WEBHOOKS)["webhooks"]
    assert {h["clientConfig"]["caBundle"] for h in hooks} == {ca}

    # A refused write (no RBAC, say) is reported, not raised: the servers still start.
    kube.objects.pop(("APIService", "", APISERVICE))
    kube.put(api_service())
    kube.refuse["APIService"] = 403
    assert await plain.publish(plain.bundle.ca_cert) is False


async def test_cert_manager_mode_reads_the_directory_and_publishes_nothing(
    kube: FakeKube, tmp_path: Path
) -> None:
    bundle = tls.issue(NAMES)
    bundle.write(tmp_path)
    managed = replica(kube, cert_dir=str(tmp_path))
    await managed.ensure()
    assert managed.bundle is not None and managed.bundle.cert == bundle.cert
    assert "caBundle" not in kube.obj("APIService", APISERVICE)["spec"]
    assert ("Secret", NS, SECRET) not in kube.objects


@pytest.fixture
async def metrics_server(kube: FakeKube) -> AsyncIterator[tuple[int, tls.ServingCertificates]]:
    certificates = replica(kube)
    await certificates.start()
    auth = MetricsAuth(read_configmap=no_configmap, review=no_review)
    runner = await metrics_api.serve(
        LoadReportStore(),
        auth=auth,
        host="127.0.0.1",
        port=0,
        ssl_context=certificates.server_ssl(own=True),
    )
    port = runner.addresses[0][1]
    try:
        yield port, certificates
    finally:
        await runner.cleanup()
        await certificates.stop()


async def no_configmap(namespace: str, name: str) -> dict[str, Any] | None:
    return None


async def no_review(user: User, access: Access) -> bool:
    return False


async def _get(port: int, ca: bytes, server_name: str) -> int:
    context = ssl.create_default_context(cadata=ca.decode())
    async with aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{port}/healthz"  # TLS is the question here, not who asks
        async with session.get(url, ssl=context, server_hostname=server_name) as resp:
            return resp.status


async def test_the_metrics_api_serves_under_the_published_ca(
    kube: FakeKube, metrics_server: tuple[int, tls.ServingCertificates]
) -> None:
    """What the aggregator does: dial the Service, check the name it knows the server by
    against the APIService's caBundle."""
    port, certificates = metrics_server
    ca = base64.b64decode(kube.obj("APIService", APISERVICE)["spec"]["caBundle"])
    assert await _get(port, ca, f"clawdbot-metrics.{NS}.svc") == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(port, tls.issue(NAMES).ca_cert, f"clawdbot-metrics.{NS}.svc")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(port, ca, "someone-else.example")

    # A renewed leaf is served on the next handshake, under the same CA.
    before = certificates.bundle
    assert before is not None
    renewed = tls.issue(NAMES, ca=(before.ca_cert, before.ca_key))
    kube.objects.pop(("Secret", NS, SECRET))
    kube.put({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": SECRET, "namespace": NS, "ownerReferences": [OWNER]},
              "data": renewed.secret_data()})  # fmt: skip
    assert await certificates.ensure() is True
    assert await _get(port, ca, f"clawdbot-metrics.{NS}.svc") == 200
    # In a thread: the server answers from this test's event loop.
    served = (await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))).encode()
    assert x509.load_pem_x509_certificate(served) == x509.load_pem_x509_certificate(renewed.cert)


def test_the_operator_names_every_service_and_the_apiservice_it_publishes_to() -> None:
    env = {"CLAWDBOT_WEBHOOK_SERVICE": "w", "CLAWDBOT_DISCOVERY_SERVICE": "d", "POD_NAMESPACE": NS}

    def config(*argv: str) -> OperatorConfig:
        return operator_main.config_from_args(operator_main.parse_args(argv), env)

    made = manager.serving_certificates(
        config("--metrics-service", "m", "--metrics-api-service", APISERVICE), FakeKube(), [OWNER]
    )
    for service in ("w", "d", "m"):
        assert f"{service}.{NS}.svc" in made.names
    assert (made.api_service, made.owner_references) == (APISERVICE, [OWNER])

    # Certificate files of its own for the metrics API: its CA is not the operator's.
    own = config(
        "--metrics-api-service", APISERVICE, "--metrics-cert-file", "c", "--metrics-key-file", "k"
    )
    assert manager.serving_certificates(own, FakeKube(), []).api_service == ""
    # The metrics API off: its Service is not named, nothing is published to the APIService.
    off = config("--metrics-port", "0", "--metrics-api-service", APISERVICE)
    made = manager.serving_certificates(off, FakeKube(), [])
    assert made.api_service == "" and f"m.{NS}.svc" not in made.names


def test_defaults_publish_nothing_and_own_nothing() -> None:
    args = operator_main.parse_args([])
    assert (args.metrics_service, args.metrics_api_service, args.owner_deployment) == (
        "clawdbot-metrics",
        "",
        "",
    )


async def test_owner_references_name_the_operators_deployment() -> None:
    kube = FakeKube()
    kube.put({"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "clawdbot", "namespace": NS, "uid": "u-9"}})  # fmt: skip
    refs = await manager.owner_references(kube, NS, "clawdbot")
    assert refs == [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "clawdbot",
                     "uid": "u-9"}]  # fmt: skip
    assert await manager.owner_references(kube, NS, "missing") == []


async def test_the_lease_a_replica_creates_is_owned() -> None:
    kube = FakeKube()
    elector = LeaderElector(kube, NS, "clawdbot", "pod-a_1", owner_references=[OWNER])
    assert await elector.try_acquire_or_renew() is True
    assert kube.obj("Lease", "clawdbot", NS)["metadata"]["ownerReferences"] == [OWNER]


def test_login_uses_the_service_address_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf's own login names kubernetes.default.svc (cluster DNS); the pod's environment
    has the address every client-go program uses."""
    found = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t")
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: found)
    settings = kopf.OperatorSettings()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    info = manager.login(settings=settings)
    assert info is not None and (info.server, info.token) == ("https://10.96.0.1:443", "t")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    info = manager.login(settings=settings)
    assert info is not None and info.server == "https://[fd00::1]:443"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    info = manager.login(settings=settings)
    assert info is not None and info.server == "https://kubernetes.default.svc"
