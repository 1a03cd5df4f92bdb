"""The audit log: chaining, rotation, restarts, tamper detection and `clawdbot audit verify`."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from clawdbot_api.v1alpha1.routingpolicy import Audit
from clawdbot_cli.main import main
from clawdbot_sidecar.accounting.audit import (
    GENESIS,
    AuditLog,
    AuditRecord,
    FsyncPolicy,
    Tamper,
    rotated_files,
    verify,
)

T0 = 1_764_000_000.0


def record(i: int, **changes: Any) -> AuditRecord:
    base = AuditRecord(
        request_id=f"req-{i}",
        target="cloud",
        reason="rule:long-prompts",
        model="gpt-4o",
        prompt_tokens=100 + i,
        completion_tokens=20,
        latency_ms=12.5,
        redacted={"EMAIL": 2, "US_SSN": 1},
        time=T0 + i,
    )
    return replace(base, **changes)


def write_log(path: Path, n: int, **kwargs: Any) -> list[Path]:
    log = AuditLog.to_file(path, **kwargs)
    for i in range(n):
        log.append(record(i))
    log.close()
    return rotated_files(path)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_records_are_chained_from_genesis(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    recs = [json.loads(line) for line in lines(path)]
    assert [r["seq"] for r in recs] == [0, 1, 2]
    assert recs[0]["prev"] == GENESIS
    assert recs[1]["prev"] == recs[0]["hash"] and recs[2]["prev"] == recs[1]["hash"]
    assert recs[0]["time"] == "2025-11-24T16:00:00.000Z"
    assert recs[0]["redacted"] == {"EMAIL": 2, "US_SSN": 1}
    result = verify(path)
    assert result.ok and result.records == 3 and result.last_hash == recs[2]["hash"]


def test_lines_are_canonical_json(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 1)
    line = lines(path)[0]
    assert line.endswith("\n")
    assert line[:-1] == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"))


def test_records_hold_no_content_and_bound_client_strings() -> None:
    fields = record(0, request_id="x" * 5000).fields(T0)
    assert set(fields) == {
        "kind",
        "time",
        "request_id",
        "target",
        "reason",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "redacted",
        "cache_hit",
        "status",
        "fallback",
    }
    assert len(fields["request_id"]) == 256
    with pytest.raises(ValueError, match="entity names"):
        record(0, redacted={"jane@example.org": 1}).fields(T0)


def test_clock_stamps_records_without_a_time(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog.to_file(path, clock=lambda: T0)
    log.append(record(0, time=None))
    log.close()
    assert json.loads(lines(path)[0])["time"] == "2025-11-24T16:00:00.000Z"


@pytest.mark.parametrize("policy", list(FsyncPolicy))
def test_every_fsync_policy_writes_a_valid_chain(tmp_path: Path, policy: FsyncPolicy) -> None:
    path = tmp_path / "a.jsonl"
    write_log(path, 5, fsync=policy, fsync_interval_s=0.01)
    assert verify(path).records == 5


def test_rotation_links_files_into_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    files = write_log(path, 10, max_bytes=800)
    assert len(files) > 3 and files[-1] == path
    for old, new in pairwise(files):
        link = json.loads(lines(new)[0])
        assert link["kind"] == "link" and link["file"] == old.name
        assert link["prev"] == json.loads(lines(old)[-1])["hash"]
    whole = verify(files)
    assert whole.ok and whole.records == 10 + len(files) - 1
    # The newest file alone verifies from its link on; the set minus one does not.
    assert verify(path).ok
    broken = verify([files[0], *files[2:]])
    assert broken.problem is Tamper.DELETED and broken.file == str(files[2])
    assert broken.line == 1


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    write_log(path, 2)
    result = verify(path)
    assert result.ok and result.records == 4
    assert [json.loads(line)["seq"] for line in lines(path)] == [0, 1, 2, 3]


def test_restart_after_a_torn_write_keeps_the_evidence_and_links_on(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    text = path.read_text()
    path.write_text(text[:-40])  # a crash in the middle of the last line
    files = write_log(path, 1)
    assert len(files) == 2
    result = verify(files)
    assert result.problem is Tamper.TRUNCATED
    assert (result.file, result.line) == (str(files[0]), 3)
    assert verify(files[1]).ok  # the new file links to record #1, the last intact one
    assert json.loads(lines(files[1])[0])["seq"] == 2


def test_outside_rotation_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog.to_file(path)
    log.append(record(0))
    log.flush_future().result(timeout=5)
    moved = tmp_path / "audit.jsonl.000000000001"
    path.rename(moved)  # what logrotate's default "create" mode does
    log.append(record(1))
    log.close()
    link = json.loads(lines(path)[0])
    assert link["kind"] == "link" and "file" not in link
    assert verify([moved, path]).ok


# --- tampering -------------------------------------------------------------------------


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_log(path, 6)
    return path


def _rewrite(path: Path, new_lines: list[str]) -> None:
    path.write_text("".join(new_lines))


def canonical(obj: dict[str, Any]) -> bytes:
    """A record's encoding as the chain hashes it (sorted keys, no spaces, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def test_edited_field_is_found(chain: Path) -> None:
    ls = lines(chain)
    ls[2] = ls[2].replace('"target":"cloud"', '"target":"local"')
    _rewrite(chain, ls)
    result = verify(chain)
    assert (result.problem, result.line) == (Tamper.EDITED, 3)
    assert "hash does not match" in result.detail


def test_edit_with_recomputed_hash_names_the_rewritten_line(chain: Path) -> None:
    ls = lines(chain)
    rec = json.loads(ls[2])
    rec["model"] = "other"
    del rec["hash"]
    body = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    rec["hash"] = hashlib.sha256(body.encode()).hexdigest()
    ls[2] = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
    _rewrite(chain, ls)
    result = verify(chain)
    assert (result.problem, result.line) == (Tamper.EDITED, 3)
    assert "no longer links" in result.detail


def test_deleted_line_is_found(chain: Path) -> None:
    ls = lines(chain)
    del ls[3]
    _rewrite(chain, ls)
    result = verify(chain)
    assert (result.problem, result.line) == (Tamper.DELETED, 4)
    assert result.records == 3


def test_deleted_first_line_is_found(chain: Path) -> None:
    _rewrite(chain, lines(chain)[1:])
    assert (verify(chain).problem, verify(chain).line) == (Tamper.DELETED, 1)


def test_reordered_lines_are_found(chain: Path) -> None:
    ls = lines(chain)
    ls[2], ls[4] = ls[4], ls[2]
    _rewrite(chain, ls)
    result = verify(chain)
    assert (result.problem, result.line) == (Tamper.REORDERED, 3)


def test_replayed_line_is_found(chain: Path) -> None:
    ls = lines(chain)
    ls.insert(4, ls[1])
    _rewrite(chain, ls)
    assert (verify(chain).problem, verify(chain).line) == (Tamper.REORDERED, 5)


def test_cut_off_last_line_is_truncation(chain: Path) -> None:
    chain.write_text(chain.read_text()[:-30])
    result = verify(chain)
    assert (result.problem, result.line) == (Tamper.TRUNCATED, 6)


def test_removed_tail_is_caught_with_an_expected_last_hash(chain: Path) -> None:
    last = verify(chain).last_hash
    _rewrite(chain, lines(chain)[:-2])
    assert verify(chain).ok  # the chain alone cannot tell
    result = verify(chain, expected_last_hash=last)
    assert result.problem is Tamper.TRUNCATED


def test_garbage_line_is_an_edit(chain: Path) -> None:
    ls = lines(chain)
    ls[1] = "hello\n"
    _rewrite(chain, ls)
    assert (verify(chain).problem, verify(chain).line) == (Tamper.EDITED, 2)


def test_hmac_chain_needs_the_key(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write_log(path, 3, hmac_key=b"k1")
    assert verify(path, hmac_key=b"k1").ok
    wrong = verify(path, hmac_key=b"k2")
    assert (wrong.problem, wrong.line) == (Tamper.EDITED, 1)
    assert not verify(path).ok


# --- concurrency and sinks -------------------------------------------------------------


async def test_async_appends_from_many_tasks_and_threads(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog.to_file(path, fsync=FsyncPolicy.ALWAYS)

    async def task(base: int) -> None:
        for i in range(50):
            log.append(record(base + i))
            await asyncio.sleep(0)

    def thread(base: int) -> None:
        for i in range(50):
            log.append(record(base + i))

    threads = [threading.Thread(target=thread, args=(10_000 * (k + 1),)) for k in range(3)]
    for t in threads:
        t.start()
    await asyncio.gather(*(task(1000 * k) for k in range(4)))
    for t in threads:
        t.join()
    await log.flush()
    assert verify(path).records == 350
    await log.aclose()
    log.append(record(0))
    assert log.dropped == 1  # after close: counted, not written


def test_stream_sink_writes_a_verifiable_chain(tmp_path: Path) -> None:
    out = io.StringIO()
    log = AuditLog.to_stream(out)
    for i in range(3):
        log.append(record(i))
    log.close()
    path = tmp_path / "stdout.log"
    path.write_text(out.getvalue())
    assert verify(path).records == 3


def test_from_api_picks_the_sink(tmp_path: Path) -> None:
    path = tmp_path / "policy.jsonl"
    log = AuditLog.from_api(Audit(sink="file", path=str(path)))
    log.append(record(0))
    log.close()
    assert verify(path).ok
    with pytest.raises(ValueError, match=r"audit\.path"):
        AuditLog.from_api(Audit(sink="file"))


# --- the CLI ---------------------------------------------------------------------------


def test_cli_verify_ok(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(chain)]) == 0
    assert "ok: 6 records" in capsys.readouterr().out


def test_cli_verify_rotated_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_log(tmp_path / "a.jsonl", 8, max_bytes=800)
    assert main(["audit", "verify", *map(str, files)]) == 0
    assert main(["audit", "verify", *map(str, reversed(files))]) == 1


def test_cli_verify_tampered_exits_1_naming_the_line(
    chain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ls = lines(chain)
    del ls[2]
    _rewrite(chain, ls)
    assert main(["audit", "verify", str(chain)]) == 1
    assert f"{chain}:3: deleted" in capsys.readouterr().err


def test_cli_verify_with_hmac_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.jsonl"
    write_log(path, 2, hmac_key=b"secret-key")
    key = tmp_path / "key"
    key.write_text("secret-key\n")
    assert main(["audit", "verify", "--hmac-key-file", str(key), str(path)]) == 0
    assert main(["audit", "verify", str(path)]) == 1


def test_cli_verify_a_chain_continued_across_the_status_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A log written before records carried status and fallback, continued after an upgrade.
    path = tmp_path / "a.jsonl"
    old = {**record(0).fields(T0), "seq": 0, "prev": GENESIS}
    del old["status"], old["fallback"]
    digest = hashlib.sha256(canonical(old)).hexdigest()
    path.write_text(canonical({**old, "hash": digest}).decode() + "\n")
    log = AuditLog.to_file(path)
    log.append(record(1, status=502, fallback=True))
    log.close()
    recs = [json.loads(line) for line in lines(path)]
    assert "status" not in recs[0] and (recs[1]["status"], recs[1]["fallback"]) == (502, True)
    assert main(["audit", "verify", str(path)]) == 0
    assert "ok: 2 records" in capsys.readouterr().out


def test_cli_verify_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "verify", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_restart_after_a_crash_mid_rotation_links_to_the_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    rotated = tmp_path / "audit.jsonl.000000000003"
    path.rename(rotated)  # renamed away, then the process died before the new link
    files = write_log(path, 1)
    assert files == [rotated, path]
    assert verify(files).ok and verify(files).records == 5


class FlakyStream(io.StringIO):
    """A stream whose second write fails, like a full disk."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        if self.writes == 2:
            raise OSError(28, "No space left on device")
        return super().write(s)


def test_a_failed_write_is_reported_and_the_chain_goes_on(tmp_path: Path) -> None:
    out = FlakyStream()
    log = AuditLog.to_stream(out)
    log.append(record(0))
    log.flush_future().result(timeout=5)
    log.append(record(1))
    with pytest.raises(OSError, match="No space"):
        log.flush_future().result(timeout=5)
    log.append(record(2))
    log.close()
    assert (log.errors, log.dropped) == (1, 1)
    path = tmp_path / "out.log"
    path.write_text(out.getvalue())
    result = verify(path)
    assert result.ok and result.records == 2


def test_non_finite_latency_is_refused_at_append(tmp_path: Path) -> None:
    log = AuditLog.to_file(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="latency_ms"):
        log.append(record(0, latency_ms=float("nan")))
    log.close()
