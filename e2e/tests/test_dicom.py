"""A CT slice through the injected sidecar: the cloud sees a PNG and a de-identified summary.

The cluster of test_routing.py (the webhook injects the sidecar, which gets its policy over
the discovery stream; the ONNX runtime serves the tiny model at its pod IP). The policy is
patched to de-identify DICOM (spec.dicom, with dates shifted) and to write its audit log on
the sidecar's stdout. The app, with the real ``openai`` client, sends pydicom's CT_small.dcm
as a ``file`` part next to a long question (the policy's rules send long prompts to the
cloud): the cloud stand-in receives a PNG and the header's summary, and none of the file's
identifying values; the audit records, read back from the sidecar's output, verify as a
hash chain and say what the profile did without a value.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import openai
import pydicom
import pytest
from pydicom.data import get_testdata_file

from clawdbot_sidecar.accounting.audit import verify
from clawdbot_testing.dicom import search_encodings
from e2e.conftest import E2ECluster
from e2e.harness.kube import Kubectl
from e2e.harness.operator import Operator
from e2e.harness.routing import LONG, deploy, model_server, sidecar_of, stub_requests

pytestmark = pytest.mark.e2e

POLICY_PROPAGATION_S = 30.0
# How long the audit record of an answered request may take to reach the sidecar's stdout.
AUDIT_WAIT_S = 10.0
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID",
               "SeriesInstanceUID", "SOPInstanceUID", "StudyDate", "InstitutionName",
               "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip


@pytest.fixture
def operator(routed_operator: Operator) -> Operator:
    return routed_operator


def _ask(client: openai.OpenAI, data: bytes) -> Any:
    part = {
        "type": "file",
        "file": {
            "filename": "ct.dcm",
            "file_data": "data:application/dicom;base64," + base64.b64encode(data).decode(),
        },
    }
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": LONG}, part]}]
    return client.chat.completions.with_raw_response.create(
        model="tiny-chat", max_tokens=16, messages=messages
    )


def _answered_by_cloud(client: openai.OpenAI, data: bytes, log_tail: Any) -> Any:
    """The answer, once the patched policy (spec.dicom) reached the sidecar: before, the
    file part is content it can't inspect, kept local (where the tiny model refuses it)."""
    deadline = time.monotonic() + POLICY_PROPAGATION_S
    while True:
        try:
            reply = _ask(client, data)
            if reply.headers["x-clawdbot-target"] == "cloud":
                return reply
        except openai.BadRequestError as exc:
            assert "text content" in str(exc), exc
        assert time.monotonic() < deadline, log_tail()
        time.sleep(0.5)


def _audit_output(log: Path) -> str:
    """The sidecar's output once the answered request's audit record is in it (records are
    written after the answer, off the request's path)."""
    deadline = time.monotonic() + AUDIT_WAIT_S
    while True:
        output = log.read_text(errors="replace")
        if '"dicom":{' in output.replace(" ", "") or time.monotonic() > deadline:
            return output
        time.sleep(0.2)


def test_a_ct_slice_leaves_as_a_png_and_a_deidentified_summary(
    *,
    local_cluster: E2ECluster,
    kube: Kubectl,
    operator: Operator,
    cloud_stub: str,
    tmp_path: Path,
) -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    data = Path(path).read_bytes()
    original = pydicom.dcmread(path)
    values = [str(original.get(k)) for k in IDENTIFYING if original.get(k)]
    models = tmp_path / "models"
    model_pod, client_pod = deploy(kube, cloud_stub, models)
    patch = {"spec": {
        "audit": {"enabled": True, "sink": "stdout"},
        "dicom": {"options": ["retainLongitudinalTemporalInformationModifiedDates"],
                  "dateShiftDays": -365},
    }}  # fmt: skip
    kube.run("patch", "routingpolicy", "chat", "--type=merge", "-p", json.dumps(patch))
    with (
        model_server(local_cluster, model_pod, models, timeout=60),
        sidecar_of(local_cluster, client_pod, operator) as (base, sidecar),
    ):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        reply = _answered_by_cloud(client, data, sidecar.log_tail)
        assert reply.parse().choices[0].message.content
        output = _audit_output(sidecar.log_path)

    [sent] = [r for r in stub_requests(cloud_stub) if "image_url" in json.dumps(r)]
    raw = json.dumps(sent, ensure_ascii=False)
    parts = [p for m in sent["body"]["messages"] for p in m["content"] if isinstance(p, dict)]
    [image] = [p for p in parts if p["type"] == "image_url"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    png = base64.b64decode(image["image_url"]["url"].split(",", 1)[1])
    assert png.startswith(b"\x89PNG")
    summary = next(p["text"] for p in parts if p["type"] == "text" and "DICOM header" in p["text"])
    assert "Modality: CT" in summary and "PatientIdentityRemoved: YES" in summary
    assert "LongitudinalTemporalInformationModified: MODIFIED" in summary
    assert "application/dicom" not in raw
    for blob in (raw.encode(), png):
        assert [v for v in values if any(e in blob for e in search_encodings(v))] == []

    # The audit records on the sidecar's stdout: a chain that verifies, DICOM counts in it.
    records = [line for line in output.splitlines() if line.startswith('{"') and '"hash"' in line]
    log = tmp_path / "audit.jsonl"
    log.write_text("".join(f"{line}\n" for line in records))
    assert verify(log).ok, output[-2000:]
    dicom = [json.loads(line)["dicom"] for line in records if '"dicom"' in line]
    cloud_records = [d for d in dicom if d["files"] == 1]
    assert cloud_records and cloud_records[-1]["profile"] == "basic"
    assert cloud_records[-1]["actions"]["X"] > 0
    assert cloud_records[-1]["sha256"] == [hashlib.sha256(data).hexdigest()]
    assert not [v for v in values if v in "\n".join(records)]
