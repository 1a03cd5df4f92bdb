"""DICOM through the real sidecar: the cloud stand-in gets a PNG and a de-identified
summary, never a planted value; the local model gets the original; the audit says how."""

from __future__ import annotations

import base64
import io
import json
import zlib
from pathlib import Path
from typing import Any

import openai
import pydicom
import pytest
from sidecar_support import StartSidecar, policy, received

from clawdbot_sidecar.accounting.audit import verify
from clawdbot_testing.dicom import planted_file, search_encodings

STUDY = "1.2.826.0.1.3680043.10.999.20"


def _file_part(data: bytes) -> dict[str, Any]:
    url = "data:application/dicom;base64," + base64.b64encode(data).decode()
    return {"type": "file", "file": {"file_data": url, "filename": "slice.dcm"}}


def _image_part(data: bytes) -> dict[str, Any]:
    url = "data:application/dicom;base64," + base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def _spec(cloud: str, audit: Path | None = None, **dicom: Any) -> dict[str, Any]:
    return policy(
        cloud,
        rules=[],
        defaultTarget="cloud",
        dicom=dicom,
        audit={"enabled": True, "sink": "file", "path": str(audit)}
        if audit
        else {"enabled": False},
    )


def _pngs(body: dict[str, Any]) -> list[bytes]:
    out = []
    for message in body["messages"]:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                assert url.startswith("data:image/png;base64,")
                out.append(base64.b64decode(url.split(",", 1)[1]))
    return out


@pytest.mark.parametrize("shape", [_file_part, _image_part])
async def test_the_cloud_gets_a_png_and_a_summary_never_a_planted_value(
    make_sidecar: StartSidecar, cloud: str, local_url: str, tmp_path: Path, shape: Any
) -> None:
    planted = planted_file(study_uid=STUDY)
    audit = tmp_path / "audit.jsonl"
    sc = await make_sidecar(_spec(cloud, audit), [local_url])
    reply = await sc.client.chat.completions.with_raw_response.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "Any lesion in this slice?"}, shape(planted.data)]}],
        max_tokens=8,
    )  # fmt: skip
    assert reply.headers["x-clawdbot-target"] == "cloud"
    [sent] = await received(cloud)
    body = sent.get("body", sent)
    raw = json.dumps(body, ensure_ascii=False).encode()
    [png] = _pngs(body)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    texts = [p["text"] for m in body["messages"] for p in m["content"] if p["type"] == "text"]
    assert any("Modality: CT" in t and "PatientIdentityRemoved: YES" in t for t in texts)
    # Nothing planted in the JSON, the PNG (its inflated rows too) or any encoding.
    idat = zlib.decompress(png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8])
    for blob in (raw, png, idat):
        left = [k for k, v in planted.values.items() if any(e in blob for e in search_encodings(v))]
        assert left == []
    assert "application/dicom" not in raw.decode()
    await sc.core.close()
    result = verify(audit)
    assert result.ok
    [record] = [json.loads(line) for line in audit.read_text().splitlines()]
    dicom = record["dicom"]
    assert dicom["profile"] == "basic" and dicom["files"] == 1
    assert dicom["actions"]["X"] > 200 and dicom["private_removed"] == 5
    assert len(dicom["sha256"][0]) == 64
    assert not [v for v in planted.values.values() if v in audit.read_text()]


async def test_burned_in_text_stays_local_and_is_refused_when_asked(
    make_sidecar: StartSidecar, cloud: str, local_url: str
) -> None:
    ds = pydicom.dcmread(io.BytesIO(planted_file(study_uid=STUDY).data))
    ds.Modality = "US"
    del ds.BurnedInAnnotation
    buf = io.BytesIO()
    ds.save_as(buf)
    content = [{"type": "text", "text": "hi"}, _file_part(buf.getvalue())]
    sc = await make_sidecar(_spec(cloud), [local_url])
    # The local model gets the original (the tiny test model answers 400 to a file part).
    await _ask(sc, content)
    metrics = await sc.metrics()
    assert 'reason="dicom:dicom-burned-in-unknown:US",target="local"' in metrics
    assert await received(cloud) == []
    spec = _spec(cloud)
    spec["redaction"] = {"uninspectable": "reject"}
    refusing = await make_sidecar(spec, [local_url])
    with pytest.raises(openai.BadRequestError) as refused:
        await refusing.client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": content}], max_tokens=8
        )
    assert refused.value.code == "dicom_not_deidentified"
    assert await received(cloud) == []


async def test_without_spec_dicom_a_dicom_part_stays_uninspectable(
    make_sidecar: StartSidecar, cloud: str, local_url: str
) -> None:
    spec = policy(cloud, rules=[], defaultTarget="cloud")
    sc = await make_sidecar(spec, [local_url])
    content = [_file_part(planted_file(study_uid=STUDY).data)]
    await _ask(sc, content)
    assert 'reason="uninspectable:file",target="local"' in await sc.metrics()
    assert await received(cloud) == []


async def _ask(sc: Any, content: list[dict[str, Any]]) -> None:
    """Send ``content``; the tiny local model answers a file part with 400."""
    try:
        await sc.client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": content}], max_tokens=8
        )
    except openai.BadRequestError as exc:
        assert "text content" in str(exc)


async def test_without_pydicom_a_dicom_part_never_leaves(
    make_sidecar: StartSidecar, cloud: str, local_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clawdbot_sidecar.dicom import convert  # noqa: PLC0415

    monkeypatch.setattr(convert, "available", lambda: False)  # the extra not installed
    spec = _spec(cloud)
    spec["redaction"] = {"uninspectable": "allow"}  # even then: not de-identified, not sent
    sc = await make_sidecar(spec, [local_url])
    await _ask(sc, [_file_part(planted_file(study_uid=STUDY).data)])
    assert 'reason="dicom:dicom-unavailable",target="local"' in await sc.metrics()
    assert await received(cloud) == []


async def test_the_summary_goes_through_text_redaction(
    make_sidecar: StartSidecar, cloud: str, local_url: str
) -> None:
    ds = pydicom.dcmread(io.BytesIO(planted_file(study_uid=STUDY).data))
    ds.StudyDescription = "Follow-up chest CT, results to jane.roe@example.com"
    buf = io.BytesIO()
    ds.save_as(buf)
    # cleanDescriptors keeps the description (the header names no such address): the
    # policy's redaction still finds the e-mail address in the summary.
    sc = await make_sidecar(_spec(cloud, options=["cleanDescriptors"]), [local_url])
    content = [{"type": "text", "text": "Findings?"}, _file_part(buf.getvalue())]
    reply = await sc.client.chat.completions.with_raw_response.create(
        model="tiny-chat", messages=[{"role": "user", "content": content}], max_tokens=8
    )
    assert reply.headers["x-clawdbot-target"] == "cloud"
    raw = json.dumps(await received(cloud))
    assert "Follow-up chest CT" in raw
    assert "jane.roe@example.com" not in raw and "<EMAIL_1>" in raw


async def test_a_responses_request_is_converted_on_its_way_to_a_chat_cloud(
    make_sidecar: StartSidecar, cloud: str, local_url: str
) -> None:
    planted = planted_file(study_uid=STUDY)
    sc = await make_sidecar(_spec(cloud), [local_url])
    url = "data:application/dicom;base64," + base64.b64encode(planted.data).decode()
    reply = await sc.client.responses.with_raw_response.create(
        model="tiny-chat",
        input=[{"role": "user", "content": [
            {"type": "input_text", "text": "Findings?"},
            {"type": "input_file", "filename": "ct.dcm", "file_data": url}]}],
    )  # fmt: skip
    assert reply.headers["x-clawdbot-target"] == "cloud"
    [sent] = await received(cloud)
    assert sent["path"] == "/v1/chat/completions"
    raw = json.dumps(sent).encode()
    assert b"data:image/png;base64," in raw and b"application/dicom" not in raw
    assert [
        k for k, v in planted.values.items() if any(e in raw for e in search_encodings(v))
    ] == []


def test_the_audit_record_takes_only_names_counts_and_digests() -> None:
    from clawdbot_sidecar.accounting.audit import AuditRecord  # noqa: PLC0415

    good = {"profile": "basic", "options": ["cleanDescriptors"], "files": 1,
            "actions": {"X": 3, "U": 2}, "private_removed": 1, "sha256": ["ab" * 32]}  # fmt: skip
    fields = AuditRecord("r", "cloud", "rule:x", "m", dicom=good).fields(0.0)
    assert fields["dicom"]["actions"] == {"U": 2, "X": 3}
    for bad in ({"actions": {"Doe^John": 1}}, {"options": ["a value"]}, {"sha256": ["Q001"]}):
        with pytest.raises(ValueError, match="dicom"):
            AuditRecord("r", "cloud", "rule:x", "m", dicom=good | bad).fields(0.0)
