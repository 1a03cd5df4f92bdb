"""ONNX int8/int4: the pod compresses the stored model at start and serves the copy.

The operator (a real process) builds the pod; kwok schedules it and the pod runner then
plays the kubelet for it: first the ``compress-model`` init container (the real
``clawdbot compress``), then the ``server`` container (the real ``clawdbot-runtime``), both
in one pod directory so they share the pod's emptyDirs. The stored model is the project's
tiny fp32 model "baked into the image" at ``/models``; the answer comes through the
``openai`` client.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import openai
import pytest

from clawdbot_testing.models.tinylm import DEMO_MODEL_NAME, build_tiny_lm
from e2e.conftest import E2ECluster
from e2e.harness.kube import Kubectl
from e2e.harness.operator import Operator
from e2e.harness.podrunner import (
    kubectl_getter,
    plan_pod_process,
    run_pod,
    start_pod_process,
)
from e2e.harness.waits import wait_http_ok, wait_ready_pod

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
WAIT_S = 60.0
COMPRESS_TIMEOUT_S = 120.0
COMPRESSED_DIR = "/compressed-models"


# An operator each precision's compressed graph holds.
QUANTIZED_OP = {"int8": "MatMulInteger", "int4": "MatMulNBits"}


@pytest.mark.parametrize("precision", sorted(QUANTIZED_OP))
def test_onnx_model_is_compressed_at_start_and_served(
    local_cluster: E2ECluster, kube: Kubectl, operator: Operator, tmp_path: Path, precision: str
) -> None:
    models = tmp_path / "models"
    build_tiny_lm(models)
    kube.apply(
        {"apiVersion": "clawdbot.io/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "tiny-chat"},
         "spec": {"model": {"name": DEMO_MODEL_NAME, "uri": "file:///models"},
                  "runtime": "onnx", "precision": precision, "accelerator": {"type": "cpu"},
                  "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}}
    )  # fmt: skip
    pod = wait_ready_pod(kube, "clawdbot.io/model-deployment=tiny-chat", timeout=WAIT_S)
    (init,) = pod["spec"]["initContainers"]
    assert init["name"] == "compress-model"
    assert init["image"] == pod["spec"]["containers"][0]["image"]
    server_args = pod["spec"]["containers"][0]["args"]
    assert server_args[server_args.index("--model-repository") + 1] == COMPRESSED_DIR

    getter = kubectl_getter(local_cluster.kubectl)
    image_files = {"/models": models}
    # The init container runs to completion, as the kubelet runs it before the server.
    with run_pod(
        pod, getter, container="compress-model", argv0_map={"clawdbot": str(BIN / "clawdbot")},
        image_files=image_files, wait_port=False, keep_dir=True,
    ) as compress:  # fmt: skip
        pod_dir = compress.workdir
        try:
            code = compress.process.wait(timeout=COMPRESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"compress-model still running:\n{compress.log_tail()}")
        init_log = compress.log_tail(80)
    try:
        assert code == 0, init_log
        assert f"{DEMO_MODEL_NAME}/1 -> " in init_log and f"precision: {precision}" in init_log
        compressed = compress.mounts[COMPRESSED_DIR] / DEMO_MODEL_NAME / "1"
        assert (compressed / "generation.json").is_file()
        graph = onnx.load_model(str(compressed / "model.onnx")).graph
        assert QUANTIZED_OP[precision] in {n.op_type for n in graph.node}

        # The server, in the same pod directory: it sees what the init container wrote.
        plan = plan_pod_process(
            pod, getter, pod_dir, container="server", image_files=image_files,
            argv0_map={"clawdbot-runtime": str(BIN / "clawdbot-runtime")},
        )  # fmt: skip
        assert plan.mounts[COMPRESSED_DIR] == compress.mounts[COMPRESSED_DIR]
        server_dir = tmp_path / "server"
        server_dir.mkdir()
        server = start_pod_process(plan, server_dir)
        try:
            ip = pod["status"]["podIP"]
            server.wait_for_port(8000, timeout=WAIT_S)
            wait_http_ok(
                f"http://{ip}:8000/v2/health/ready", timeout=WAIT_S, log_tail=server.log_tail
            )
            client = openai.OpenAI(base_url=f"http://{ip}:8000/v1", api_key="unused", max_retries=0)
            reply = client.chat.completions.create(
                model=DEMO_MODEL_NAME,
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=16,
                temperature=0,
            )
            assert reply.model == DEMO_MODEL_NAME
            assert reply.choices[0].message.content, server.log_tail()
        finally:
            server.stop()
    finally:
        shutil.rmtree(pod_dir, ignore_errors=True)

    md = kube.wait_for(
        "md",
        "tiny-chat",
        lambda m: (m.get("status") or {}).get("phase") == "Available",
        timeout=WAIT_S,
        what="Available",
    )
    assert md["status"]["currentRevision"] == 1
