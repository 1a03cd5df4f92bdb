"""The REST front: Open Inference Protocol v2 over HTTP/JSON, plus ``/metrics``.

Handlers only translate JSON to :class:`InferenceRequest` and back; errors become
``{"error": ...}`` with the status code the error class carries (see errors.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from clawdbot_api.openai_wire import error_body as openai_error_body
from clawdbot_runtime.dataplane import DataPlane, InferenceRequest, add_input
from clawdbot_runtime.errors import InferenceError, InvalidInput, RequestTooLarge
from clawdbot_runtime.tensors import Array, decode_json, encode_json

log = logging.getLogger(__name__)

DATAPLANE_KEY = web.AppKey("dataplane", DataPlane)
MAX_BYTES_KEY = web.AppKey("max_request_bytes", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _dataplane(request: web.Request) -> DataPlane:
    return request.app[DATAPLANE_KEY]


def error_body(request: web.Request, exc: InferenceError) -> dict[str, Any]:
    """The error document: OpenAI's shape under /v1, the v2 shape elsewhere."""
    if request.path.startswith("/v1/"):
        return openai_error_body(
            exc.message, type_=exc.openai_type, param=exc.param, code=exc.openai_code
        )
    return {"error": exc.message}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn data plane errors into JSON error responses with the mapped status."""
    try:
        return await handler(request)
    except InferenceError as exc:
        return web.json_response(error_body(request, exc), status=exc.http_status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or InvalidInput saying what is wrong with it."""
    try:
        body = await request.json(loads=orjson.loads)
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLarge(
            f"request body is larger than this server's limit of "
            f"{request.app[MAX_BYTES_KEY]} bytes (--max-request-bytes); send fewer rows per "
            "request"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidInput("request body is not UTF-8") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def decode_infer_request(name: str, version: str | None, body: dict[str, Any]) -> InferenceRequest:
    """Decode a v2 JSON inference request body."""
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, Array] = {}
    for tensor in raw_inputs:
        if not isinstance(tensor, dict):
            raise InvalidInput("each input must be an object with name, shape, datatype, data")
        tname = tensor.get("name")
        for key in ("shape", "datatype", "data"):
            if key not in tensor:
                raise InvalidInput(f"input '{tname}': '{key}' is missing", param=str(tname))
        array = decode_json(str(tname), tensor["datatype"], tensor["shape"], tensor["data"])
        add_input(inputs, tname, array)
    outputs: list[str] | None = None
    if body.get("outputs") is not None:
        raw_outputs = body["outputs"]
        if not isinstance(raw_outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
        ):
            raise InvalidInput("'outputs' must be a list of objects with a 'name'")
        outputs = [o["name"] for o in raw_outputs]
    request_id = body.get("id", "")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return InferenceRequest(
        model_name=name,
        model_version=version,
        id=str(request_id) if request_id is not None else "",
        inputs=inputs,
        outputs=outputs,
        parameters=parameters,
    )


async def live(request: web.Request) -> web.Response:
    """GET /v2/health/live."""
    ok = _dataplane(request).live()
    return web.json_response({"live": ok}, status=200 if ok else 503)


async def ready(request: web.Request) -> web.Response:
    """GET /v2/health/ready: 200 only after every initial model is warmed up."""
    ok = _dataplane(request).ready()
    return web.json_response({"ready": ok}, status=200 if ok else 503)


async def server_metadata(request: web.Request) -> web.Response:
    """GET /v2."""
    return web.json_response(_dataplane(request).server_metadata())


async def model_metadata(request: web.Request) -> web.Response:
    """GET /v2/models/{name}[/versions/{version}]."""
    name, version = request.match_info["name"], request.match_info.get("version")
    return web.json_response(_dataplane(request).model_metadata(name, version))


async def model_ready(request: web.Request) -> web.Response:
    """GET /v2/models/{name}[/versions/{version}]/ready."""
    name, version = request.match_info["name"], request.match_info.get("version")
    ok = _dataplane(request).model_ready(name, version)
    return web.json_response({"name": name, "ready": ok}, status=200 if ok else 503)


async def infer(request: web.Request) -> web.Response:
    """POST /v2/models/{name}[/versions/{version}]/infer."""
    name, version = request.match_info["name"], request.match_info.get("version")
    dataplane = _dataplane(request)
    # Decoding sits inside the scope so malformed requests are counted (and drain-aware).
    async with dataplane.request_scope(name, "rest"):
        body = await read_json(request)
        response = await dataplane.execute(decode_infer_request(name, version, body))
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [encode_json(n, a) for n, a in response.outputs.items()],
    }
    if response.id:
        document["id"] = response.id
    return web.json_response(document)


async def repository_index(request: web.Request) -> web.Response:
    """POST /v2/repository/index: every model with its state and failure reason."""
    return web.json_response(_dataplane(request).manager.index())


async def repository_load(request: web.Request) -> web.Response:
    """POST /v2/repository/models/{name}/load: pick up a new version now."""
    name = request.match_info["name"]
    served = await _dataplane(request).manager.load(name)
    return web.json_response({"name": name, "version": str(served.model.version)})


async def repository_unload(request: web.Request) -> web.Response:
    """POST /v2/repository/models/{name}/unload."""
    name = request.match_info["name"]
    manager = _dataplane(request).manager
    manager.entry(name)
    await manager.unload(name)
    return web.json_response({"name": name})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format."""
    body = _dataplane(request).metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def build_app(dataplane: DataPlane, *, max_request_bytes: int) -> web.Application:
    """The aiohttp application with the v2 routes and /metrics."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=max_request_bytes)
    app[DATAPLANE_KEY] = dataplane
    app[MAX_BYTES_KEY] = max_request_bytes
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_post(prefix + "/infer", infer)
    app.router.add_post("/v2/repository/index", repository_index)
    app.router.add_post("/v2/repository/models/{name}/load", repository_load)
    app.router.add_post("/v2/repository/models/{name}/unload", repository_unload)
    app.router.add_get("/metrics", metrics)
    return app
