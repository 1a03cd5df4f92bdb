"""Fuzz targets for the sidecar's parsers of untrusted input, and the invariants they check.

Each target takes raw bytes and raises (an AssertionError, or whatever escaped) only on a
finding: an error type other than the documented ones, a refusal that is not a 4xx in
OpenAI's error shape, a 500, a log record at ERROR, a request parsed out of a body, or a
server that no longer answers a well-formed request. Both engines drive them:
``tests/fuzz/test_fuzz.py`` (hypothesis, in ``make test``) and ``tests/fuzz/run.py``
(atheris, coverage-guided, in ``make fuzz``).

* ``http_front``: bytes into the HTTP server's protocol object (the real server, the real
  REST front and routing core, upstreams on loopback answering canned OpenAI answers), as
  a raw stream or wrapped as the body of a plain, chunked, Upgrade or CONNECT request.
* ``openai_body``: a REST body through ``openai_wire.loads`` and ``routing.request.validate``.
* ``grpc_infer``: a serialized ModelInferRequest or ChatRequest through the gRPC front's
  decoders (``infer_request_body``, ``_one_string``, ``chat_request_body``) and validation.
* ``config``: a config file through ``config.parse_config``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import traceback
from collections.abc import Callable
from typing import Any, Final

from google.protobuf.message import DecodeError

from clawdbot_api.openai_wire import loads
from clawdbot_api.protocol import grpc_predict_v2_pb2 as pb
from clawdbot_sidecar.config import (
    MAX_REPORTED_ERRORS,
    ConfigError,
    SidecarConfig,
    parse_config,
)
from clawdbot_sidecar.errors import RequestError
from clawdbot_sidecar.fronts import grpc as grpc_front
from clawdbot_sidecar.fronts.http import HttpServer, Request, _Connection
from clawdbot_sidecar.fronts.rest import RestFront
from clawdbot_sidecar.protocol import generate_pb2 as gen
from clawdbot_sidecar.routing.core import RoutingCore
from clawdbot_sidecar.routing.request import ApiKind, Inbound, validate
from clawdbot_sidecar.upstream import Upstream

__all__ = ["TARGETS", "Finding"]

# Statuses the HTTP front may answer garbage or a well-formed request with. 500 is never
# one: it means a handler failed.
ALLOWED_STATUSES: Final = frozenset({200, 400, 403, 404, 405, 408, 413, 429, 431, 502, 503})
BODY_LIMIT: Final = 64 * 1024
# How long one input may keep the server busy (the canned upstreams answer at once).
SETTLE_S: Final = 5.0
API_PATHS: Final = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_ERROR_FIELDS: Final = {"message", "type", "param", "code"}


class Finding(AssertionError):
    """An invariant broke: what the target found."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise Finding(what)


def _check_error_body(status: int, body: bytes) -> None:
    try:
        doc = loads(body)
    except ValueError as exc:
        raise Finding(f"a {status} answer whose body is not JSON: {body[:200]!r}") from exc
    _check(
        isinstance(doc, dict)
        and isinstance(doc.get("error"), dict)
        and set(doc["error"]) == _ERROR_FIELDS
        and isinstance(doc["error"]["message"], str),
        f"a {status} answer not in OpenAI's error shape: {body[:200]!r}",
    )


class _ErrorLog(logging.Handler):
    """Remembers records at ERROR and above (a handler that failed, a fatal protocol error)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # asyncio's records too (a protocol callback or a task of the server that failed),
        # but only those about this code: in a test session, other tests' leftovers log
        # there as they are collected.
        text = record.getMessage()
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        if record.name.startswith("clawdbot") or "clawdbot" in text or "tests/fuzz" in text:
            self.records.append(record)

    def take(self) -> list[str]:
        out = [r.getMessage() for r in self.records]
        self.records.clear()
        return out


# -- http_front ---------------------------------------------------------------------------


class _Transport(asyncio.Transport):
    """The connection's side of a socket, in memory: what the server writes is kept."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: _Connection) -> None:
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.output = bytearray()
        self.closing = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closing:
            self.output += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Answers:
    """The responses in a connection's output, read as a client reads them."""

    def __init__(self, output: bytes, head_only: list[bool]) -> None:
        self.statuses: list[int] = []
        self.bodies: list[bytes | None] = []  # None: the answer to a HEAD has no body
        rest = bytes(output)
        while rest:
            head, sep, rest = rest.partition(b"\r\n\r\n")
            _check(bool(sep), f"an answer cut off in its head: {head[:200]!r}")
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            _check(
                len(parts) >= 2 and parts[0] == b"HTTP/1.1" and parts[1].isdigit(),
                f"not a status line: {lines[0][:200]!r}",
            )
            status = int(parts[1])
            if status == 100:  # an interim answer to Expect: 100-continue
                continue
            headers = dict(line.lower().split(b": ", 1) for line in lines[1:] if b": " in line)
            index = len(self.statuses)
            body: bytes | None = b""
            if index < len(head_only) and head_only[index]:
                body = None
            elif headers.get(b"transfer-encoding") == b"chunked":
                body, rest = _unchunk(rest)
            else:
                length = int(headers.get(b"content-length", b"0"))
                body, rest = rest[:length], rest[length:]
                _check(len(body) == length, "an answer shorter than its Content-Length")
            self.statuses.append(status)
            self.bodies.append(body)


def _unchunk(data: bytes) -> tuple[bytes, bytes]:
    body = bytearray()
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        _check(bool(sep), "a chunked answer cut off")
        size = int(size_line, 16)
        if size == 0:
            _check(data.startswith(b"\r\n"), "a chunked answer without its last CRLF")
            return bytes(body), data[2:]
        body += data[:size]
        data = data[size + 2 :]


class _CannedUpstream:
    """An OpenAI-compatible server on loopback with fixed answers (local model and cloud)."""

    CHAT: Final = (
        b'{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
    )
    TEXT: Final = (
        b'{"id":"t","object":"text_completion","model":"m","choices":[{"index":0,'
        b'"text":"ok","finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    )
    EMBEDDING: Final = (
        b'{"object":"list","model":"m","data":[{"object":"embedding","index":0,'
        b'"embedding":[0.5,0.25]}],"usage":{"prompt_tokens":3,"total_tokens":3}}'
    )
    EVENTS: Final = (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
        b'"delta":{"content":"ok"},"finish_reason":null}]}\n\n'
        b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
        b'"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
        b"\n\ndata: [DONE]\n\n"
    )

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                writer.write(self._answer(head.split(b" ", 2)[1], b'"stream":true' in body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, path: bytes, stream: bool) -> bytes:
        if stream:
            return (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(self.EVENTS), self.EVENTS)
            )
        body = (
            self.EMBEDDING
            if path.endswith(b"/embeddings")
            else self.CHAT
            if path.endswith(b"/chat/completions")
            else self.TEXT
        )
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (
                len(body),
                body,
            )
        )


class HttpFront:
    """The sidecar's REST front on the real HTTP server, fed through its protocol object.

    Input layout: byte 0 picks how the rest is sent (raw, as the body of a sized, chunked
    or Upgrade request, or after a CONNECT head); byte 1 picks the API path and the size of
    the pieces the bytes arrive in; the rest is the payload.
    """

    MODES: Final = ("raw", "sized", "chunked", "upgrade", "connect")

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors = _ErrorLog()
        for name in ("clawdbot", "asyncio"):
            logging.getLogger(name).addHandler(self.errors)
        self.seen: list[Request] = []
        self.runs = 0
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        canned = _CannedUpstream()
        url = await canned.start()
        self._canned = canned
        config = SidecarConfig.model_validate(
            {
                "policy": {
                    "localModels": [{"name": "tiny"}],
                    "cloud": {"baseURL": url, "model": "gpt", "maxRetries": 0},
                    "rules": [{"name": "short", "match": {"maxTokens": 64}, "target": "local"}],
                    "defaultTarget": "cloud",
                    "cache": {"enabled": True},
                    "audit": {"enabled": False},
                },
                "endpoints": [{"url": url, "model": "tiny"}],
                "limits": {"maxBodyBytes": BODY_LIMIT},
            }
        ).model_copy(update={"cloud_api_key": "fuzz-key"})
        self.upstream = Upstream.create(connect_timeout_s=1.0)
        self.core = RoutingCore(config, self.upstream, seed=1)
        self.front = RestFront(self.core)
        await self.front.start("127.0.0.1", 0)
        self.server: HttpServer = self.front.server
        dispatch = self.server.handler

        async def recorded(request: Request) -> Any:
            self.seen.append(request)
            return await dispatch(request)

        self.server.handler = recorded

    def __call__(self, data: bytes) -> None:
        if len(data) < 2:
            return
        mode = self.MODES[data[0] % len(self.MODES)]
        path = API_PATHS[(data[1] >> 6) % len(API_PATHS)]
        piece = (data[1] & 0x3F) + 1
        payload = data[2:]
        stream = _wrap(mode, path, payload)
        self.seen.clear()
        output = self._feed([stream[i : i + piece] for i in range(0, len(stream), piece)])
        self._check_answers(mode, payload, output)
        self._check_alive()
        self.runs += 1
        if self.runs % 500 == 0:  # and over a real socket now and then
            self.loop.run_until_complete(self._check_alive_over_a_socket())

    def _feed(self, pieces: list[bytes]) -> bytes:
        conn = _Connection(self.server)
        transport = _Transport(self.loop, conn)
        conn.connection_made(transport)
        for piece in pieces:
            if transport.closing:
                break
            conn.data_received(piece)
        self.loop.run_until_complete(self._settle(conn))
        output = bytes(transport.output)
        transport.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        found = self.errors.take()
        _check(not found, f"logged at ERROR: {found}")
        return output

    async def _settle(self, conn: _Connection) -> None:
        # Polled: the connection has no event for "answered everything", and adding one to
        # the server for a fuzzer is not worth it.
        async with asyncio.timeout(SETTLE_S):
            while conn.task is not None or conn.queue:  # noqa: ASYNC110
                await asyncio.sleep(0.0005)

    def _check_answers(self, mode: str, payload: bytes, output: bytes) -> None:
        answers = _Answers(output, [r.method == "HEAD" for r in self.seen])
        for status, body in zip(answers.statuses, answers.bodies, strict=True):
            _check(status in ALLOWED_STATUSES, f"answered {status}: {(body or b'')[:300]!r}")
            if status >= 400 and body is not None:
                _check_error_body(status, body)
        if mode == "connect":
            if self.seen:
                raise Finding(f"a request parsed after CONNECT: {self.seen[0].path!r}")
            _check(answers.statuses == [405], f"CONNECT answered {answers.statuses}")
        elif mode != "raw":
            # One request, the wrapper, whose body is the payload (or a refusal): never a
            # request parsed out of the body.
            _check(len(self.seen) <= 1, f"{len(self.seen)} requests parsed from one")
            if self.seen:
                _check(self.seen[0].body == payload, "the body handed on is not the one sent")
            _check(len(answers.statuses) == 1, f"{len(answers.statuses)} answers to one request")

    def close(self) -> None:
        """Stop the front, the core, the upstream client and the canned upstream."""

        async def stop() -> None:
            await self.front.close()
            await self.core.close()
            await self.upstream.close()
            self._canned.server.close()
            # What is left (the canned server's connections, lingering closes) ends here.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.loop.run_until_complete(stop())
        self.loop.close()
        for name in ("clawdbot", "asyncio"):
            logging.getLogger(name).removeHandler(self.errors)

    def _check_alive(self) -> None:
        self.seen.clear()
        output = self._feed([b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"])
        _check(output.startswith(b"HTTP/1.1 200 OK") and output.endswith(b"ok"), "not alive")

    async def _check_alive_over_a_socket(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), SETTLE_S)
        finally:
            writer.close()
        _check(answer.startswith(b"HTTP/1.1 200 OK"), f"not alive over a socket: {answer[:80]!r}")


def _wrap(mode: str, path: str, payload: bytes) -> bytes:
    target = path.encode()
    if mode == "raw":
        return payload
    if mode == "sized":
        return b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (
            target,
            len(payload),
            payload,
        )
    if mode == "chunked":
        chunks = b"".join(
            b"%x\r\n%b\r\n" % (len(payload[i : i + 100]), payload[i : i + 100])
            for i in range(0, len(payload), 100)
        )
        return b"POST %b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%b0\r\n\r\n" % (
            target,
            chunks,
        )
    if mode == "upgrade":
        return (
            b"POST %b HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (target, len(payload), payload)
        )
    return b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + payload


# -- openai_body --------------------------------------------------------------------------


def openai_body(data: bytes) -> None:
    """A REST body: JSON refused only with ValueError, validation only with a 400."""
    try:
        body = loads(data)
    except ValueError:
        return
    except Exception as exc:
        raise Finding(f"loads raised {type(exc).__name__}, not ValueError: {exc}") from exc
    for kind in ApiKind:
        _validated(Inbound(kind, body, {"X-Tenant": "t"}))


def _validated(inbound: Inbound) -> None:
    try:
        request = validate(inbound)
    except RequestError as exc:
        _check(exc.status == 400, f"validate refused with {exc.status}")
        _check(set(exc.body()["error"]) == _ERROR_FIELDS, "a refusal not in OpenAI's shape")
        return
    _check(isinstance(request.model, str) and bool(request.model), "a request without a model")
    _check(isinstance(request.stream, bool), "a request whose stream is not a boolean")
    _check(isinstance(request.body, dict), "a request whose body is not an object")


# -- grpc_infer ---------------------------------------------------------------------------


def grpc_infer(data: bytes) -> None:
    """A ModelInferRequest and a ChatRequest decoded from ``data``, and ``data`` as a raw
    BYTES tensor: refused only with a 4xx RequestError."""
    try:
        infer = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        infer = None
    if infer is not None:
        _refused_or(lambda: _infer_body(infer))
    try:
        chat = gen.ChatRequest.FromString(data)
    except DecodeError:
        chat = None
    if chat is not None:
        _refused_or(
            lambda: _validated(Inbound(ApiKind.CHAT, grpc_front.chat_request_body(chat), {}))
        )
    tensor = pb.ModelInferRequest.InferInputTensor(name="text_input", datatype="BYTES", shape=[1])
    _refused_or(lambda: _raw_string(tensor, data))


def _infer_body(request: pb.ModelInferRequest) -> None:
    kind, body = grpc_front.infer_request_body(request)
    _check(kind in (ApiKind.CHAT, ApiKind.COMPLETIONS), f"an infer request became {kind}")
    _validated(Inbound(kind, body, {}))


def _raw_string(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes) -> None:
    text = grpc_front._one_string(tensor, raw)
    # What it decoded is the one element the raw contents framed.
    (length,) = struct.unpack_from("<I", raw)
    _check(text.encode() == raw[4 : 4 + length], "the raw BYTES element decoded wrong")


def _refused_or(call: Callable[[], None]) -> None:
    try:
        call()
    except RequestError as exc:
        _check(400 <= exc.status < 500, f"a gRPC decoder refused with {exc.status}")


# -- config -------------------------------------------------------------------------------


def config(data: bytes) -> None:
    """A config file: refused only with ConfigError, whose message is bounded."""
    text = data.decode("utf-8", "replace")
    try:
        parsed = parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        lines = str(exc).count("\n")
        _check(lines <= MAX_REPORTED_ERRORS + 10, f"a ConfigError of {lines} lines")
        return
    _check(isinstance(parsed, SidecarConfig), "parse_config returned something else")


_http_front: HttpFront | None = None


def http_front(data: bytes) -> None:
    """Bytes into the HTTP front (one server for the process, started on first use)."""
    global _http_front  # noqa: PLW0603 - one server per fuzzing process
    if _http_front is None:
        _http_front = HttpFront()
    _http_front(data)


TARGETS: Final[dict[str, Callable[[bytes], None]]] = {
    "http_front": http_front,
    "openai_body": openai_body,
    "grpc_infer": grpc_infer,
    "config": config,
}
