"""The NetworkPolicy that sandboxes model pods: serving ports in, nothing out but DNS.

A model is code and data from elsewhere; a malicious one must not phone home. Egress is
opened only for the weights' download when the model URI is remote (hf://, s3://, gs://,
http(s)://), to that download's port. NetworkPolicy can't tell an init container from the
server, so that egress stays open while the pod runs: keep the weights on a PVC (pvc://) or
in the image (file://) for a pod with no way out.
"""

from __future__ import annotations

from clawdbot_api.v1alpha1 import ModelDeployment
from clawdbot_operator.builders.meta import Manifest, object_meta, selector_labels
from clawdbot_operator.builders.runtimes import model_source, server_ports
from clawdbot_operator.config import OperatorConfig


def build_network_policy(md: ModelDeployment, config: OperatorConfig, revision: int) -> Manifest:
    """Ingress on the serving ports from anywhere (clients are sidecars in any namespace);
    egress to DNS, plus the download port for remote model URIs."""
    ingress_ports = [{"protocol": "TCP", "port": p["containerPort"]} for p in server_ports(md)]
    egress: list[Manifest] = [
        {
            "to": [{"namespaceSelector": {}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }
    ]
    source = model_source(md, config)
    if source.egress_ports:
        egress.append(
            {
                "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}],
                "ports": [{"protocol": "TCP", "port": p} for p in source.egress_ports],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(md, revision),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(md)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": ingress_ports}],
            "egress": egress,
        },
    }
