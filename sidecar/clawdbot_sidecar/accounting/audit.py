"""The tamper-evident audit log: one hash-chained JSON line per routing decision.

Each line holds a sequence number, the previous line's hash (`prev`) and its own hash over
the canonical encoding of everything else (sorted keys, no spaces, ASCII), so an edited,
deleted, reordered or truncated line breaks the chain where it happened. The first record
chains to `GENESIS`; after a rotation the new file opens with a `link` record whose `prev`
is the old file's last hash, so a set of rotated files verifies as one chain. With an HMAC
key (the RoutingPolicy's `audit.hmacKeySecretRef`) the hashes are HMAC-SHA256, and a forger
without the key cannot recompute them after an edit.

Records carry decision metadata only: target, reason, tokens, latency, redaction counts, the
final HTTP status and whether a fallback answered. `AuditRecord` has no field for prompt or
answer text, and entity counts are keyed by entity names, so sensitive values have nowhere
to go.

Appends never block the event loop: `AuditLog.append` queues the record and a writer thread
hashes, writes and fsyncs in batches (group commit).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol, TextIO

from clawdbot_api.clock import rfc3339
from clawdbot_api.v1alpha1.routingpolicy import Audit

__all__ = [
    "GENESIS",
    "AuditLog",
    "AuditRecord",
    "FeedbackRecord",
    "FsyncPolicy",
    "Tamper",
    "VerifyResult",
    "rotated_files",
    "verify",
]

log = logging.getLogger(__name__)

GENESIS: Final = "0" * 64
"""The `prev` of the very first record of a chain."""

# Strings a client can influence (request id, model) are cut to this, so a log line stays
# small whatever the request said.
_MAX_FIELD: Final = 256
_ENTITY_NAME: Final = re.compile(r"^[A-Z][A-Z0-9_]{0,62}$")
_ACTION_CODES: Final = frozenset("XZDUKC")
_OPTION_NAME: Final = re.compile(r"^[A-Za-z]{1,80}$")
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")
# How far from the end of an existing file the writer looks for the last record on restart.
_TAIL_BYTES: Final = 64 * 1024
# Records queued but not yet written; above it appends are dropped and counted rather than
# letting a stalled disk grow the sidecar's memory without bound.
_MAX_PENDING: Final = 100_000
_BATCH: Final = 512


class FsyncPolicy(StrEnum):
    """When written records are forced to stable storage."""

    ALWAYS = "always"
    """After every batch, before `flush` returns: no acknowledged record is lost on a crash."""
    INTERVAL = "interval"
    """At most every `fsync_interval_s`: bounded loss, far fewer disk flushes."""
    NEVER = "never"
    """Left to the OS page cache (the file is still flushed from the process)."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What one request's audit line says: the decision and its cost, never content."""

    request_id: str
    target: str
    """Where the request went: local, cloud, cache or reject."""
    reason: str
    """Why: the rule name or the router's reason."""
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    redacted: Mapping[str, int] = field(default_factory=dict)
    """Values redacted per entity name."""
    cache_hit: bool = False
    time: float | None = None
    """Unix time of the decision; the log's clock at append when unset."""
    status: int = 200
    """The HTTP status the app got. A stream that started with 200 and was then cut off
    records how it ended: 499 (the app left) or 502 (the upstream broke off)."""
    fallback: bool = False
    """The answer (or the last failure) came from the other target after the first failed."""
    endpoint: str | None = None
    """The API the app called (chat/completions, responses, messages...); records written
    before this field existed have none."""
    clawdbot_request_id: str | None = None
    """The answer's x-clawdbot-request-id, which feedback records name."""
    confidence: float | None = None
    """The local answer's confidence (from its token log-probabilities), when measured."""
    threshold: float | None = None
    """The cascade's confidence threshold, for a cascade decision."""
    dicom: Mapping[str, Any] | None = None
    """DICOM de-identification (spec.dicom): profile, options, files, attributes per action
    code, private attributes removed and the SHA-256 of each original file; never a value."""

    def fields(self, now: float) -> dict[str, Any]:
        """The record's JSON fields, checked in the caller's thread so the writer can't fail."""
        for name in self.redacted:
            # Keys are the one free-form part of the counts: insist they are entity names.
            if not _ENTITY_NAME.match(name):
                raise ValueError("redacted: keys must be entity names")
        if not math.isfinite(self.latency_ms):
            raise ValueError("latency_ms: must be finite")
        return {
            "kind": "decision",
            "time": rfc3339(self.time if self.time is not None else now, "milliseconds"),
            "request_id": self.request_id[:_MAX_FIELD],
            "target": self.target[:_MAX_FIELD],
            "reason": self.reason[:_MAX_FIELD],
            "model": self.model[:_MAX_FIELD],
            "prompt_tokens": int(self.prompt_tokens),
            "completion_tokens": int(self.completion_tokens),
            "latency_ms": round(float(self.latency_ms), 3),
            "redacted": {k: int(v) for k, v in sorted(self.redacted.items())},
            "cache_hit": bool(self.cache_hit),
            "status": int(self.status),
            "fallback": bool(self.fallback),
        } | self._optional()

    def _optional(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.endpoint is not None:
            out["endpoint"] = self.endpoint[:_MAX_FIELD]
        if self.clawdbot_request_id is not None:
            out["clawdbot_request_id"] = self.clawdbot_request_id[:_MAX_FIELD]
        for name in ("confidence", "threshold"):
            value = getattr(self, name)
            if value is not None:
                if not math.isfinite(value):
                    raise ValueError(f"{name}: must be finite")
                out[name] = round(float(value), 4)
        if self.dicom is not None:
            out["dicom"] = _dicom_fields(self.dicom)
        return out


def _dicom_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    """The DICOM part of a record, checked: only names, counts and hex digests."""
    actions = {str(k): int(v) for k, v in sorted(d.get("actions", {}).items())}
    options = [str(o) for o in d.get("options", [])]
    digests = [str(h) for h in d.get("sha256", [])]
    if not all(k in _ACTION_CODES for k in actions):
        raise ValueError("dicom.actions: keys must be action codes")
    if not all(_OPTION_NAME.match(o) for o in [*options, str(d.get("profile", ""))]):
        raise ValueError("dicom: options and profile must be names")
    if not all(_SHA256.match(h) for h in digests):
        raise ValueError("dicom.sha256: must be hex digests")
    return {
        "profile": str(d.get("profile", "")),
        "options": options,
        "files": int(d.get("files", 0)),
        "actions": actions,
        "private_removed": int(d.get("private_removed", 0)),
        "sha256": digests,
    }


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """A score given to an earlier answer (explicit, or implicit: the question re-asked)."""

    clawdbot_request_id: str
    score: float
    source: str
    """explicit (POST /v1/feedback, gRPC Feedback) or reask."""
    result: str
    """recorded, unknown (no such answer in the window) or duplicate."""
    target: str = ""
    """Who gave the scored answer (local, cloud), when known."""
    time: float | None = None

    def fields(self, now: float) -> dict[str, Any]:
        if not math.isfinite(self.score):
            raise ValueError("score: must be finite")
        return {
            "kind": "feedback",
            "time": rfc3339(self.time if self.time is not None else now, "milliseconds"),
            "clawdbot_request_id": self.clawdbot_request_id[:_MAX_FIELD],
            "score": round(float(self.score), 4),
            "source": self.source[:_MAX_FIELD],
            "result": self.result[:_MAX_FIELD],
            "target": self.target[:_MAX_FIELD],
        }


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _digest(body: Mapping[str, Any], key: bytes | None) -> str:
    data = _canonical(body)
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


class _Chain:
    """The running end of the chain: next sequence number and last hash."""

    def __init__(self, key: bytes | None, seq: int = 0, prev: str = GENESIS) -> None:
        self.key = key
        self.seq = seq
        self.prev = prev

    def mark(self) -> tuple[int, str]:
        """The current end, to go back to if sealed lines never reach the sink."""
        return self.seq, self.prev

    def reset(self, mark: tuple[int, str]) -> None:
        """Go back to a `mark`."""
        self.seq, self.prev = mark

    def seal(self, fields: Mapping[str, Any]) -> str:
        """The JSON line (with newline) for `fields`, advancing the chain."""
        body = {**fields, "seq": self.seq, "prev": self.prev}
        digest = _digest(body, self.key)
        self.seq += 1
        self.prev = digest
        return _canonical({**body, "hash": digest}).decode() + "\n"


# --- verification ----------------------------------------------------------------------


class Tamper(StrEnum):
    """How a chain was found broken."""

    EDITED = "edited"
    DELETED = "deleted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of `verify`: ok, or the first broken line and why."""

    records: int
    last_hash: str
    problem: Tamper | None = None
    file: str | None = None
    line: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when every line verified."""
        return self.problem is None

    def __str__(self) -> str:
        if self.problem is None:
            return f"ok: {self.records} records, last hash {self.last_hash}"
        where = f"{self.file}:{self.line}" if self.line is not None else f"{self.file}"
        return f"{where}: {self.problem}: {self.detail}"


@dataclass(frozen=True, slots=True)
class _Line:
    file: str
    number: int
    record: dict[str, Any] | None  # None: not a record (unparseable, or a partial last line)
    complete: bool


def _read_lines(path: Path) -> list[_Line]:
    name = str(path)
    lines: list[_Line] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            complete = raw.endswith(b"\n")
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            ok = isinstance(obj, dict) and all(k in obj for k in ("seq", "prev", "hash"))
            lines.append(_Line(name, number, obj if ok else None, complete))
    return lines


def verify(
    paths: str | Path | Iterable[str | Path],
    *,
    hmac_key: bytes | None = None,
    expected_last_hash: str | None = None,
) -> VerifyResult:
    """Check one file, or rotated files in order, as one chain; name the first broken line.

    A first file that opens with a `link` record (its predecessors rotated away) is trusted
    from that link on. `expected_last_hash`, kept elsewhere, also catches a cut-off tail.
    """
    files = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    lines = [line for path in files for line in _read_lines(path)]
    last_file = str(files[-1]) if files else None
    seqs = {
        ln.record["seq"]
        for ln in lines
        if ln.record is not None and isinstance(ln.record["seq"], int)
    }
    prev, seq, count = GENESIS, 0, 0
    prior: _Line | None = None  # the last line verified
    last_good = GENESIS  # the hash before `prior`

    def broken(line: _Line, problem: Tamper, detail: str) -> VerifyResult:
        return VerifyResult(count, prev, problem, line.file, line.number, detail)

    for index, line in enumerate(lines):
        rec = line.record
        if rec is None or not line.complete:
            ends_file = index + 1 == len(lines) or lines[index + 1].file != line.file
            if ends_file and not line.complete:
                return broken(line, Tamper.TRUNCATED, "the last line is cut off")
            return broken(line, Tamper.EDITED, "not a valid audit record")
        body = {k: v for k, v in rec.items() if k != "hash"}
        try:
            digest = _digest(body, hmac_key)
        except ValueError:  # NaN or Infinity: never written by the log
            digest = None
        if digest != rec["hash"]:
            return broken(line, Tamper.EDITED, "its hash does not match its content")
        if index == 0 and rec.get("kind") == "link":
            prev, seq = rec["prev"], rec["seq"]  # predecessors rotated away: start here
        got = rec["seq"]
        if rec["prev"] != prev or got != seq:
            return _discontinuity(line, got, prior, (seq, count, prev, last_good), seqs)
        last_good = prev
        prev, seq, count, prior = rec["hash"], seq + 1, count + 1, line
    if expected_last_hash is not None and expected_last_hash != prev:
        return VerifyResult(
            count, prev, Tamper.TRUNCATED, last_file, None, "records after the end are missing"
        )
    return VerifyResult(count, prev)


def _discontinuity(
    line: _Line, got: Any, prior: _Line | None, state: tuple[int, int, str, str], seqs: set[Any]
) -> VerifyResult:
    """Why ``line`` (record ``got``) does not continue the chain.

    ``state`` is (the record expected next, records verified, the hash they end with, the
    hash before the last one).
    """
    seq, count, prev, last_good = state
    if not isinstance(got, int) or (got == seq and prior is None):
        return VerifyResult(
            count, prev, Tamper.EDITED, line.file, line.number, "does not continue the chain"
        )
    if got == seq and prior is not None:
        # This line is intact, so the one before it was rewritten, hash and all.
        return VerifyResult(
            count - 1,
            last_good,
            Tamper.EDITED,
            prior.file,
            prior.number,
            f"rewritten with a new hash ({line.file}:{line.number} no longer links to it)",
        )
    if got < seq:
        problem, detail = Tamper.REORDERED, f"record #{got} comes after #{seq - 1}"
    elif seq in seqs:
        problem, detail = Tamper.REORDERED, f"record #{seq} was moved further down"
    else:
        problem, detail = Tamper.DELETED, f"records #{seq} to #{got - 1} are missing"
    return VerifyResult(count, prev, problem, line.file, line.number, detail)


def rotated_files(path: str | Path) -> list[Path]:
    """The rotated predecessors of a log file, oldest first, then the file itself."""
    path = Path(path)
    olds = sorted(p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit())
    return [*olds, path] if path.exists() else olds


# --- writing ---------------------------------------------------------------------------


class _Sink(Protocol):
    """Where sealed lines go."""

    def resume(self, key: bytes | None) -> _Chain:
        """The chain to continue (a fresh one, or the end of an existing file)."""

    def write(self, chain: _Chain, fields: list[dict[str, Any]]) -> None:
        """Seal and write records; on OSError the chain is back where it was."""

    def sync(self) -> None:
        """Force written lines to stable storage."""

    def close(self) -> None:
        """Release the sink."""


class _StreamSink:
    """A text stream such as stdout, collected with the pod's logs."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def resume(self, key: bytes | None) -> _Chain:
        """A stream has no past to read back: every process starts a chain."""
        return _Chain(key)

    def write(self, chain: _Chain, fields: list[dict[str, Any]]) -> None:
        """Seal and write records, flushed so the log collector sees them now."""
        mark = chain.mark()
        try:
            self._stream.write("".join(chain.seal(f) for f in fields))
            self._stream.flush()
        except OSError:
            chain.reset(mark)
            raise

    def sync(self) -> None:
        """Nothing to force: the stream's reader owns durability."""

    def close(self) -> None:
        """The stream belongs to the caller and stays open."""


class _FileSink:
    """An append-only file, rotated by size (or when moved away by an outside rotator)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._fd = -1
        self._ino = -1
        self._size = 0
        self._damaged = False  # a write failed: start a new file before the next one

    def resume(self, key: bytes | None) -> _Chain:
        """The end of the existing chain (file, else newest rotated file), or a fresh one."""
        # A restart continues the chain. A tail damaged by a crash is left as evidence: the
        # chain goes on from the last intact record in a new file. So does a crash between
        # renaming a file away and writing the new file's link.
        chain = _Chain(key)
        current = self._path.exists() and self._path.stat().st_size > 0
        previous = rotated_files(self._path)
        source = self._path if current else (previous[-1] if previous else None)
        if source is None:
            self._open()
            return chain
        last, intact = _last_record(source)
        if last is not None:
            chain.seq, chain.prev = last["seq"] + 1, last["hash"]
        if current and intact:
            self._open()
        else:
            self._rotate(chain, rename=current)
        return chain

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        st = os.fstat(self._fd)
        self._ino, self._size = st.st_ino, st.st_size

    def _rotate(self, chain: _Chain, *, rename: bool = True) -> None:
        """Start a new file whose first record links to the chain so far.

        The current file is renamed to `<name>.<next seq>` (names sort oldest first), unless
        an outside rotator already moved it away (`rename=False`).
        """
        self.close()
        link: dict[str, Any] = {"kind": "link", "time": rfc3339(time.time(), "milliseconds")}
        if rename and self._path.exists():
            old = self._path.with_name(f"{self._path.name}.{chain.seq:012d}")
            os.replace(self._path, old)
            link["file"] = old.name
        self._open()
        self._append(chain.seal(link))

    def _append(self, data: str) -> None:
        raw = data.encode()
        view = memoryview(raw)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(raw)

    def write(self, chain: _Chain, fields: list[dict[str, Any]]) -> None:
        """Seal and append records, rotating first if needed or if the file was moved."""
        mark = chain.mark()
        try:
            if self._damaged:
                self._rotate(chain)
            elif self._moved():
                self._rotate(chain, rename=False)
            self._damaged = False
            lines: list[str] = []
            size = self._size
            for f in fields:
                before = chain.mark()
                line = chain.seal(f)
                if self._max_bytes and size > 0 and size + len(line) > self._max_bytes:
                    self._append("".join(lines))
                    lines = []
                    chain.reset(before)  # the line belongs after the new file's link
                    mark = chain.mark()  # what is written so far stays written
                    self._rotate(chain)
                    line = chain.seal(f)
                    size = self._size
                lines.append(line)
                size += len(line)
            self._append("".join(lines))
        except OSError:
            chain.reset(mark)
            self._damaged = True
            raise

    def _moved(self) -> bool:
        try:
            return os.stat(self._path).st_ino != self._ino
        except FileNotFoundError:
            return True

    def sync(self) -> None:
        """fsync the current file."""
        if self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the current file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _last_record(path: Path) -> tuple[dict[str, Any] | None, bool]:
    """The last intact record of a file, and whether the file ends with it intact."""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        tail = f.read()
    lines = tail.split(b"\n")
    intact = tail.endswith(b"\n")
    for index, raw in enumerate(reversed(lines[:-1] if intact else lines)):
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("seq"), int) and "hash" in obj:
            return obj, intact and index == 0
        intact = False
    return None, False


_STOP: Final = object()


class AuditLog:
    """An append-only audit log fed from any thread or coroutine, written by one thread."""

    def __init__(
        self,
        sink: _Sink,
        *,
        fsync: FsyncPolicy = FsyncPolicy.INTERVAL,
        fsync_interval_s: float = 1.0,
        hmac_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._fsync = fsync
        self._interval = fsync_interval_s
        self._clock = clock
        # Reads the existing file's tail once, at startup, before any request is served.
        self._chain = sink.resume(hmac_key)
        # Unbounded so flush and close markers never block; `append` bounds the records.
        self._queue: queue.Queue[object] = queue.Queue()
        self._dropped = 0
        self._errors = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    @classmethod
    def to_file(
        cls,
        path: str | Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        fsync: FsyncPolicy = FsyncPolicy.INTERVAL,
        fsync_interval_s: float = 1.0,
        hmac_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> AuditLog:
        """A log in `path`, rotated to `path.<seq>` past `max_bytes` (0: never)."""
        return cls(
            _FileSink(Path(path), max_bytes),
            fsync=fsync,
            fsync_interval_s=fsync_interval_s,
            hmac_key=hmac_key,
            clock=clock,
        )

    @classmethod
    def to_stream(
        cls,
        stream: TextIO,
        *,
        hmac_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> AuditLog:
        """A log on a text stream (stdout: collected with the pod's logs); no fsync."""
        return cls(_StreamSink(stream), fsync=FsyncPolicy.NEVER, hmac_key=hmac_key, clock=clock)

    @classmethod
    def from_api(cls, audit: Audit, *, hmac_key: bytes | None = None) -> AuditLog:
        """The log a RoutingPolicy's `spec.audit` asks for (the caller checks `enabled`)."""
        if audit.sink == "file":
            if not audit.path:
                raise ValueError("audit.path: required when audit.sink is file")
            return cls.to_file(audit.path, hmac_key=hmac_key)
        return cls.to_stream(sys.stdout, hmac_key=hmac_key)

    @property
    def dropped(self) -> int:
        """Records lost because the queue was full or the log closed."""
        return self._dropped

    @property
    def errors(self) -> int:
        """Batches that failed to write (disk errors)."""
        return self._errors

    def append(self, record: AuditRecord | FeedbackRecord) -> None:
        """Queue one record; never blocks. Dropped (and counted) if the writer is far behind."""
        fields = record.fields(self._clock())
        if self._closed:
            self._dropped += 1
        elif self._queue.qsize() >= _MAX_PENDING:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.error("audit log writer is behind; %d records dropped", self._dropped)
        else:
            self._queue.put_nowait(fields)

    def flush_future(self) -> Future[None]:
        """A future resolved once everything queued before it is written (and fsynced)."""
        done: Future[None] = Future()
        if self._closed:
            done.set_result(None)
        else:
            self._queue.put(done)
        return done

    async def flush(self) -> None:
        """Wait, without blocking the loop, until every queued record is written."""
        await asyncio.wrap_future(self.flush_future())

    def close(self) -> None:
        """Write what is queued, sync and stop the writer. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()

    async def aclose(self) -> None:
        """`close` from a coroutine."""
        await asyncio.to_thread(self.close)

    def _run(self) -> None:
        last_sync = time.monotonic()
        dirty = False
        stop = False
        # The first failure since the last flush waiter was answered: the next waiter gets
        # it, whichever batch its records were written in.
        failure: OSError | None = None
        while not stop:
            try:
                first = self._queue.get(timeout=self._interval if dirty else None)
            except queue.Empty:
                first = None
            items = [] if first is None else [first]
            while len(items) < _BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [i for i in items if isinstance(i, dict)]
            waiters = [i for i in items if isinstance(i, Future)]
            stop = any(i is _STOP for i in items)
            try:
                if records:
                    self._sink.write(self._chain, records)
                    dirty = self._fsync is not FsyncPolicy.NEVER
                now = time.monotonic()
                due = self._fsync is FsyncPolicy.ALWAYS or now - last_sync >= self._interval
                # A flush waiter is told "written" only once it is also durable.
                if dirty and (due or stop or waiters):
                    self._sink.sync()
                    last_sync, dirty = now, False
            except OSError as exc:
                # The batch is lost; a partial tail, if any, stays as evidence, and the next
                # write starts a new file linked to the last hash that was written.
                failure = failure or exc
                self._errors += 1
                self._dropped += len(records)
                log.error("audit log write failed: %s", exc.strerror or exc)
            for waiter in waiters:
                if failure is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(failure)
            if waiters:
                failure = None
        self._sink.close()
