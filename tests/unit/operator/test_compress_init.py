"""ONNX int8/int4: an init container compresses the stored model; the server serves the copy."""

from __future__ import annotations

from typing import Any

import pytest
from md_support import flag, model_deployment, restricted_violations

from clawdbot_api.v1alpha1 import ModelDeployment
from clawdbot_cli.main import build_parser
from clawdbot_operator.builders.deployment import build_deployment
from clawdbot_operator.builders.runtimes import (
    COMPRESS_CONTAINER,
    COMPRESS_VOLUME,
    COMPRESSED_DIR,
    FETCH_CONTAINER,
)
from clawdbot_operator.config import OperatorConfig
from clawdbot_operator.revisions import revision_hash, snapshot

CONFIG = OperatorConfig()


def _pod(md: ModelDeployment) -> dict[str, Any]:
    pod: dict[str, Any] = build_deployment(md, CONFIG, 1, "h")["spec"]["template"]["spec"]
    return pod


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def _onnx(precision: str, **spec: Any) -> ModelDeployment:
    spec.setdefault("accelerator", {"type": "cpu"})
    return model_deployment(runtime="onnx", precision=precision, **spec)


@pytest.mark.parametrize(
    ("runtime", "precision", "accel"),
    [
        ("onnx", "fp16", "cpu"),
        ("onnx", "fp16", "nvidia"),
        ("vllm", "int8", "nvidia"),
        ("vllm", "int4", "amd"),
        ("vllm", "fp16", "cpu"),
    ],
)
def test_no_compress_step_when_served_as_stored(runtime: str, precision: str, accel: str) -> None:
    md = model_deployment(runtime=runtime, precision=precision, accelerator={"type": accel})
    pod = _pod(md)
    assert "initContainers" not in pod
    assert COMPRESS_VOLUME not in {v["name"] for v in pod["volumes"]}
    if runtime == "onnx":
        assert flag(pod["containers"][0]["args"], "--model-repository") == "/models/llama-7b"


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("accel", ["cpu", "nvidia", "amd"])
def test_compress_init_container_for_onnx_below_stored_precision(
    precision: str, accel: str
) -> None:
    md = _onnx(precision, accelerator={"type": accel})
    pod = _pod(md)
    init = pod["initContainers"]
    assert [c["name"] for c in init] == [COMPRESS_CONTAINER]
    compress, server = init[0], pod["containers"][0]

    # Same image as the server: the runtime image ships the clawdbot CLI.
    assert compress["image"] == server["image"]
    assert compress["command"] == [
        "clawdbot", "compress", "/models/llama-7b", COMPRESSED_DIR,
        "--repository", "--model", "llama-7b", "--precision", precision,
        "--keep-quantized", "--eval-inputs", "16",
    ]  # fmt: skip
    # The CLI accepts exactly that.
    parsed = build_parser().parse_args(compress["command"][1:])
    assert (parsed.repository, parsed.keep_quantized, parsed.model) == (True, True, "llama-7b")
    assert (parsed.source, parsed.target, parsed.precision) == (
        "/models/llama-7b",
        COMPRESSED_DIR,
        precision,
    )

    # Volumes: the stored model read-only, the compressed emptyDir writable, scratch space.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[COMPRESS_VOLUME] == {"name": COMPRESS_VOLUME, "emptyDir": {}}
    mounts = {m["mountPath"]: m for m in compress["volumeMounts"]}
    assert mounts["/models"] == {"name": "model", "mountPath": "/models", "readOnly": True}
    assert mounts[COMPRESSED_DIR] == {"name": COMPRESS_VOLUME, "mountPath": COMPRESSED_DIR}
    assert {"/cache", "/tmp"} <= set(mounts)

    # The server reads the compressed repository, read-only.
    assert flag(server["args"], "--model-repository") == COMPRESSED_DIR
    assert flag(server["args"], "--model") == "llama-7b"
    server_mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert server_mounts[COMPRESSED_DIR]["readOnly"] is True

    # restricted PSS, bounded resources without GPUs (compression runs on the CPU).
    assert restricted_violations(pod) == []
    assert compress["securityContext"]["readOnlyRootFilesystem"] is True
    assert compress["resources"]["requests"]["memory"]
    assert compress["resources"]["limits"]["memory"]
    assert not any(k.endswith("/gpu") for g in compress["resources"].values() for k in g)
    env = {e["name"]: e["value"] for e in compress["env"]}
    assert env["HOME"] == "/cache"


def test_compress_resources_follow_the_server() -> None:
    md = _onnx(
        "int8",
        accelerator={"type": "nvidia"},
        resources={"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"memory": "6Gi"}},
    )
    compress = _container(_pod(md), COMPRESS_CONTAINER)
    assert compress["resources"] == {
        "requests": {"cpu": "2", "memory": "3Gi"},
        "limits": {"memory": "6Gi"},
    }


def test_compress_runs_after_the_download_and_reads_it() -> None:
    md = _onnx("int4", model={"name": "tiny-chat", "uri": "s3://bucket/models"})
    pod = _pod(md)
    assert [c["name"] for c in pod["initContainers"]] == [FETCH_CONTAINER, COMPRESS_CONTAINER]
    compress = _container(pod, COMPRESS_CONTAINER)
    assert compress["command"][2:4] == ["/models/data", COMPRESSED_DIR]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in compress["volumeMounts"]


def test_model_in_the_image() -> None:
    md = _onnx("int8", model={"name": "tiny-chat", "uri": "file:///models"})
    pod = _pod(md)
    compress = _container(pod, COMPRESS_CONTAINER)
    assert compress["command"][2:4] == ["/models", COMPRESSED_DIR]
    # Nothing is mounted at /models: the image holds it.
    assert "/models" not in {m["mountPath"] for m in compress["volumeMounts"]}
    assert flag(pod["containers"][0]["args"], "--model-repository") == COMPRESSED_DIR


def test_revision_hash_changes_with_precision() -> None:
    hashes = {p: revision_hash(snapshot(_onnx(p), CONFIG)) for p in ("fp16", "int8", "int4")}
    assert len(set(hashes.values())) == 3
    # And the same spec gives the same hash.
    assert revision_hash(snapshot(_onnx("int8"), CONFIG)) == hashes["int8"]
