"""Who may read the external metrics API: real TLS handshakes on loopback, with a
front-proxy CA and client certificates made here, the way the aggregator presents them."""

from __future__ import annotations

import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from multidict import CIMultiDict

from clawdbot_operator import metrics_api, tls
from clawdbot_operator.loadreports import LoadReport, LoadReportStore
from clawdbot_operator.metrics_auth import (
    Access,
    FrontProxy,
    MetricsAuth,
    User,
    access_for,
)

NOW = dt.datetime.now(dt.UTC)
BASE = "/apis/external.metrics.k8s.io/v1beta1"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip


class CA:
    """A certificate authority that signs client certificates."""

    def __init__(self, cn: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(minutes=5))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def client(self, cn: str, directory: Path) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(minutes=5))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{cn}.crt", directory / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem(key))
        return cert_path, key_path


class Server:
    def __init__(self, port: int, ca: bytes, auth: MetricsAuth, reviews: list[Any]) -> None:
        self.port, self.ca, self.auth, self.reviews = port, ca, auth, reviews

    async def get(
        self, path: str, client: tuple[Path, Path] | None = None, **headers: Any
    ) -> tuple[int, dict[str, Any]]:
        context = ssl.create_default_context(cadata=self.ca.decode())
        if client is not None:
            context.load_cert_chain(*client)
        multi: CIMultiDict[str] = CIMultiDict()
        for key, value in headers.items():
            for v in value if isinstance(value, list) else [value]:
                multi.add(key.replace("_", "-"), v)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"https://localhost:{self.port}{path}", ssl=context, headers=multi) as r,
        ):
            return r.status, json.loads(await r.text())


@pytest.fixture
def front_proxy() -> CA:
    return CA("front-proxy-ca")


@pytest.fixture
async def server(front_proxy: CA, tmp_path: Path) -> AsyncIterator[Server]:
    configmap = {"data": {
        "requestheader-client-ca-file": front_proxy.pem,
        "requestheader-allowed-names": '["front-proxy-client"]',
        "requestheader-username-headers": '["X-Remote-User"]',
        "requestheader-group-headers": '["X-Remote-Group"]',
        "requestheader-extra-headers-prefix": '["X-Remote-Extra-"]',
    }}  # fmt: skip
    reviews: list[tuple[User, Access]] = []

    async def read(namespace: str, name: str) -> dict[str, Any] | None:
        assert (namespace, name) == ("kube-system", "extension-apiserver-authentication")
        return configmap

    async def review(user: User, access: Access) -> bool:
        """As RBAC would answer: the HPA may list metrics in "ai"."""
        reviews.append((user, access))
        return user.name == "system:serviceaccount:kube-system:hpa" and access.namespace == "ai"

    store = LoadReportStore()
    store.add(LoadReport("ai", "llama", "pod-a", dt.datetime.now(dt.UTC), inflight_requests=6))
    store.add(LoadReport("other", "llama", "pod-b", dt.datetime.now(dt.UTC), inflight_requests=9))
    auth = MetricsAuth(read, review)
    await auth.start()
    cert, key = tls.self_signed(tmp_path, ["localhost"])
    runner = await metrics_api.serve(
        store, auth=auth, host="127.0.0.1", port=0, cert_file=str(cert), key_file=str(key)
    )
    try:
        yield Server(runner.addresses[0][1], cert.read_bytes(), auth, reviews)
    finally:
        await runner.cleanup()
        await auth.stop()


HPA = "system:serviceaccount:kube-system:hpa"
VALUES = f"{BASE}/namespaces/ai/clawdbot_inflight_requests"


async def test_the_aggregator_for_an_allowed_user_is_served(
    server: Server, front_proxy: CA, tmp_path: Path
) -> None:
    client = front_proxy.client("front-proxy-client", tmp_path)
    status, body = await server.get(VALUES, client, X_Remote_User=HPA,
                                    X_Remote_Group=["system:serviceaccounts",
                                                    "system:authenticated"],
                                    X_Remote_Extra_Scopes="a%2Fb")  # fmt: skip
    assert status == 200 and [i["value"] for i in body["items"]] == ["6"]
    user, access = server.reviews[-1]
    assert user == User(HPA, ("system:serviceaccounts", "system:authenticated"),
                        (("scopes", ("a%2Fb",)),))  # fmt: skip
    assert access == Access(namespace="ai", resource="clawdbot_inflight_requests")
    # Discovery, which the aggregator checks for availability as itself, holds no values:
    # served to the authenticated front proxy without a review.
    reviews = len(server.reviews)
    status, body = await server.get(BASE, client, X_Remote_User="system:kube-aggregator")
    assert status == 200 and body["kind"] == "APIResourceList"
    assert len(server.reviews) == reviews
    status, _ = await server.get(BASE, X_Remote_User="system:kube-aggregator")
    assert status == 401  # ...but not to anyone else


async def test_a_direct_caller_is_refused_whatever_it_claims(
    server: Server, front_proxy: CA, tmp_path: Path
) -> None:
    """Any pod could connect to the metrics port: without the aggregator's certificate its
    user headers mean nothing."""
    status, body = await server.get(VALUES, X_Remote_User=HPA)
    assert (status, body["reason"]) == (401, "Unauthorized")
    assert "front proxy" in body["message"]
    impostor = CA("front-proxy-ca").client("front-proxy-client", tmp_path / "impostor")
    with pytest.raises(aiohttp.ClientError):  # a certificate of another CA: no handshake
        await server.get(VALUES, impostor, X_Remote_User=HPA)
    wrong_name = front_proxy.client("someone-else", tmp_path)
    status, body = await server.get(VALUES, wrong_name, X_Remote_User=HPA)
    assert status == 401 and "allowed names" in body["message"]
    nobody = front_proxy.client("front-proxy-client", tmp_path)
    status, body = await server.get(VALUES, nobody)
    assert status == 401 and "no user" in body["message"]
    assert not [a for _, a in server.reviews if a.resource]  # none of them got that far


async def test_a_user_is_authorised_per_namespace(
    server: Server, front_proxy: CA, tmp_path: Path
) -> None:
    client = front_proxy.client("front-proxy-client", tmp_path)
    other = f"{BASE}/namespaces/other/clawdbot_inflight_requests"
    status, body = await server.get(other, client, X_Remote_User=HPA)
    assert (status, body["reason"]) == (403, "Forbidden")
    assert 'namespace "other"' in body["message"]
    status, body = await server.get(VALUES, client, X_Remote_User="dev")
    assert status == 403 and '"dev"' in body["message"]
    # Decisions are cached briefly: the HPA polls often.
    before = len(server.reviews)
    for _ in range(3):
        assert (await server.get(VALUES, client, X_Remote_User=HPA))[0] == 200
    assert len(server.reviews) <= before + 1


async def test_health_answers_anyone(server: Server) -> None:
    context = ssl.create_default_context(cadata=server.ca.decode())
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://localhost:{server.port}/healthz", ssl=context) as r,
    ):
        assert r.status == 200


async def test_nothing_is_served_until_the_front_proxy_is_known(tmp_path: Path) -> None:
    async def unreadable(namespace: str, name: str) -> dict[str, Any] | None:
        raise OSError("forbidden")

    async def allow(user: User, access: Access) -> bool:
        return True

    auth = MetricsAuth(unreadable, allow)
    await auth.start()
    try:
        cert, key = tls.self_signed(tmp_path, ["localhost"])
        runner = await metrics_api.serve(
            LoadReportStore(), auth=auth, host="127.0.0.1", port=0, cert_file=str(cert),
            key_file=str(key),
        )  # fmt: skip
        server = Server(runner.addresses[0][1], cert.read_bytes(), auth, [])
        status, body = await server.get(VALUES, X_Remote_User=HPA)
        assert status == 401 and "has not been read" in body["message"]
        await runner.cleanup()
    finally:
        await auth.stop()


def test_front_proxy_settings_from_the_configmap() -> None:
    assert FrontProxy.from_configmap({"data": {}}) is None
    proxy = FrontProxy.from_configmap({"data": {"requestheader-client-ca-file": "PEM",
                                                "requestheader-allowed-names": "[]"}})  # fmt: skip
    assert proxy is not None and proxy.allowed_names == ()
    assert proxy.username_headers == ("X-Remote-User",)
    assert access_for("/apis") == Access(path="/apis")
    assert access_for(f"{BASE}/namespaces/n/m") == Access(namespace="n", resource="m")
