"""The Service in front of the model pods (OpenAI/v2 HTTP, and gRPC for the ONNX server)."""

from __future__ import annotations

from clawdbot_api.v1alpha1 import ModelDeployment, Runtime
from clawdbot_operator.builders.meta import (
    GRPC_PORT,
    HTTP_PORT,
    Manifest,
    name_of,
    namespace_of,
    object_meta,
    selector_labels,
)


def endpoint_url(md: ModelDeployment) -> str:
    """In-cluster base URL of the OpenAI-compatible API (status.endpoint)."""
    return f"http://{name_of(md)}.{namespace_of(md)}.svc:{HTTP_PORT}/v1"


def build_service(md: ModelDeployment, revision: int) -> Manifest:
    """A ClusterIP Service selecting the pods of every revision (rolling updates overlap)."""
    ports: list[Manifest] = [
        {
            "name": "http",
            "port": HTTP_PORT,
            "targetPort": "http",
            "protocol": "TCP",
            "appProtocol": "http",
        }
    ]
    if md.spec.runtime == Runtime.ONNX:
        ports.append(
            {
                "name": "grpc",
                "port": GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "grpc",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(md, revision),
        "spec": {"type": "ClusterIP", "selector": selector_labels(md), "ports": ports},
    }
