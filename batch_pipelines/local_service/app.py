"""The HTTP face of the local service: OpenAI's Files and Batches API under ``/v1``.

:func:`create_app` serves a :class:`~batch_pipelines.local_service.engine.BatchEngine`:

    POST /v1/files (multipart: file, purpose)    GET /v1/files    GET|DELETE /v1/files/{id}
    GET /v1/files/{id}/content                   POST /v1/batches GET /v1/batches (after, limit)
    GET /v1/batches/{id}                         POST /v1/batches/{id}/cancel
    GET|PUT /v1/_local/faults                    the service-wide fault plan (local extension)

Every route wants ``Authorization: Bearer <api_key>`` (OpenAI's 401 body otherwise) unless the app
was built with ``api_key=None``. Errors have OpenAI's shape ``{"error": {message, type, param,
code}}``; unknown ids and routes are 404s in that shape.

Uploads are streamed to a temporary file in the data directory while being counted: a body
announced (Content-Length) or found (while streaming) larger than the profile's
``max_file_bytes`` is answered 413 without being read whole. The client's file name is kept for
display only; stored files are named by generated ids.

HTTP faults: the service-wide :class:`FaultPlan`'s ``http_faults`` apply to every route except
``/v1/_local/*``. A dropped connection shows in uvicorn's log as "ASGI callable returned without
completing response": the server's own account of the cut. Tests change them at runtime with ``app.state.faults.set(plan)`` (which also
sets the engine's row-level plan for new batches) or, over HTTP, ``PUT /v1/_local/faults`` with the
plan as JSON body; either resets the "first N calls" counters.

:func:`create_realtime_app` is a tiny real-time OpenAI-compatible server (chat completions,
responses, embeddings, completions, moderations) answering with a responder: a stand-in for a
user's own model server, used to test the forwarding responder.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from pydantic import ValidationError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batch_pipelines.local_service.engine import BatchEngine, ServiceError
from batch_pipelines.local_service.faults import FaultPlan, HttpFault
from batch_pipelines.local_service.responders import DefaultResponder, Responder
from batch_pipelines.profiles import ALL_ENDPOINTS

__all__ = ["HttpFaults", "create_app", "create_realtime_app"]

_JSON_BODY_LIMIT = 1024 * 1024
_FORM_FIELD_LIMIT = 4096
# Multipart framing around the file: boundaries, part headers, the purpose field.
_MULTIPART_SLACK = 64 * 1024
_ADMIN_PREFIX = "/v1/_local/"


class HttpFaults:
    """The live HTTP fault plan of an app, with its "first N calls" counters."""

    def __init__(self, plan: FaultPlan, engine: BatchEngine | None = None) -> None:
        self._lock = threading.Lock()
        self._engine = engine
        self.plan = plan
        self._counts = [0] * len(plan.http_faults)

    def set(self, plan: FaultPlan) -> None:
        """Replace the plan (HTTP faults now, row faults for batches created from now on)."""
        with self._lock:
            self.plan = plan
            self._counts = [0] * len(plan.http_faults)
        if self._engine is not None:
            self._engine.faults = plan

    def firing(self, method: str, path: str) -> list[HttpFault]:
        """The rules that apply to this call, counting it against each."""
        fired = []
        with self._lock:
            for i, rule in enumerate(self.plan.http_faults):
                if rule.method is not None and rule.method.upper() != method:
                    continue
                if not fnmatch.fnmatchcase(path, rule.route):
                    continue
                if rule.times is not None and self._counts[i] >= rule.times:
                    continue
                self._counts[i] += 1
                fired.append(rule)
        return fired


def create_app(engine: BatchEngine, *, api_key: str | None, faults: FaultPlan | None = None) -> Starlette:
    """The OpenAI-compatible Files + Batches API over ``engine``; ``faults`` defaults to the engine's plan."""
    http_faults = HttpFaults(faults if faults is not None else engine.faults, engine)

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Response:
        try:
            return _json(await run_in_threadpool(fn, *args, **kwargs))
        except ServiceError as exc:
            return _error(exc)

    async def upload_file(request: Request) -> Response:
        try:
            fields, upload = await _receive_upload(request, engine)
        except ServiceError as exc:
            return _unread_body_error(exc)
        if upload is None:
            return _error(ServiceError(400, "Missing the 'file' part of the multipart form.", param="file"))
        filename, path = upload
        try:
            if not fields.get("purpose"):
                return _error(ServiceError(400, "Missing the 'purpose' field.", param="purpose"))
            return await call(engine.create_file, filename, fields["purpose"], path, move=True)
        finally:
            path.unlink(missing_ok=True)  # moved into files/ on success; a leftover otherwise

    async def list_files(request: Request) -> Response:
        q = request.query_params
        try:
            limit = _int_param(q, "limit", 10000)
        except ServiceError as exc:
            return _error(exc)
        return await call(engine.list_files, purpose=q.get("purpose"), after=q.get("after"), limit=limit)

    async def get_file(request: Request) -> Response:
        return await call(engine.get_file, request.path_params["file_id"])

    async def delete_file(request: Request) -> Response:
        return await call(engine.delete_file, request.path_params["file_id"])

    async def file_content(request: Request) -> Response:
        try:
            path = await run_in_threadpool(engine.file_content_path, request.path_params["file_id"])
        except ServiceError as exc:
            return _error(exc)
        return FileResponse(path, media_type="application/octet-stream")

    async def create_batch(request: Request) -> Response:
        try:
            body = await _read_json(request)
        except ServiceError as exc:
            return _unread_body_error(exc)
        for key in ("input_file_id", "endpoint", "completion_window"):
            if key not in body:
                message = f"Missing required parameter: '{key}'."
                return _error(ServiceError(400, message, code="missing_required_parameter", param=key))
        return await call(
            engine.create_batch, body["input_file_id"], body["endpoint"], body["completion_window"], body.get("metadata")
        )

    async def list_batches(request: Request) -> Response:
        try:
            limit = _int_param(request.query_params, "limit", 20)
        except ServiceError as exc:
            return _error(exc)
        return await call(engine.list_batches, after=request.query_params.get("after"), limit=limit)

    async def get_batch(request: Request) -> Response:
        return await call(engine.get_batch, request.path_params["batch_id"])

    async def cancel_batch(request: Request) -> Response:
        return await call(engine.cancel_batch, request.path_params["batch_id"])

    async def faults_admin(request: Request) -> Response:
        if request.method == "PUT":
            try:
                plan = FaultPlan.model_validate(await _read_json(request))
            except ValidationError as exc:
                return _error(ServiceError(400, f"Invalid fault plan: {exc}"))
            except ServiceError as exc:
                return _unread_body_error(exc)
            http_faults.set(plan)
        return _json(http_faults.plan.model_dump(mode="json"))

    routes = [
        Route("/v1/files", upload_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", get_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
        Route("/v1/_local/faults", faults_admin, methods=["GET", "PUT"]),
    ]
    app = _starlette(routes)
    app.state.engine = engine
    app.state.faults = http_faults
    app.add_middleware(_Guard, api_key=api_key, faults=http_faults)
    return app


def create_realtime_app(responder: Responder | None = None, *, api_key: str | None = None) -> Starlette:
    """A real-time OpenAI-compatible endpoint per batch endpoint, answered by ``responder``."""
    answer = responder or DefaultResponder()

    def route(endpoint: str) -> Route:
        async def handle(request: Request) -> Response:
            try:
                body = await _read_json(request)
            except ServiceError as exc:
                return _unread_body_error(exc)
            status, payload = (await run_in_threadpool(answer.respond, endpoint, [body]))[0]
            if status == 0:  # no HTTP answer upstream: a gateway timeout here
                message = payload.get("message", "upstream failed")
                return _error(ServiceError(504, message, type="server_error", code=payload.get("code")))
            return _json(payload, status)

        return Route(endpoint, handle, methods=["POST"])

    app = _starlette([route(endpoint) for endpoint in ALL_ENDPOINTS])
    app.add_middleware(_Guard, api_key=api_key, faults=None)
    return app


# ---- plumbing ------------------------------------------------------------------------------


def _starlette(routes: list[Route]) -> Starlette:
    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        message = f"Invalid URL ({request.method} {request.url.path})"
        return _error(ServiceError(status, message))

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    # Paths are served as written: a trailing slash is a 404, as at OpenAI, not a redirect that
    # echoes the client's decoded path (``/batches/%2e%2e%2f`` -> ``Location: /batches/..``).
    app.router.redirect_slashes = False
    return app


class _Guard:
    """Bearer-key check, then injected HTTP faults, in front of every route."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, faults: HttpFaults | None) -> None:
        self._app = app
        self._expected = f"Bearer {api_key}".encode() if api_key is not None else None
        self._faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self._expected is not None:
            given = dict(scope["headers"]).get(b"authorization")
            if given is None:
                await _error(_missing_key()).__call__(scope, receive, send)
                return
            if not hmac.compare_digest(given, self._expected):
                await _error(_wrong_key()).__call__(scope, receive, send)
                return
        path: str = scope["path"]
        fired = [] if self._faults is None or path.startswith(_ADMIN_PREFIX) else self._faults.firing(scope["method"], path)
        before = [rule for rule in fired if not rule.after]
        after = [rule for rule in fired if rule.after]
        if await _misbehave(before, scope, receive, send):
            return
        if not after:
            await self._app(scope, receive, send)
            return
        # Serve the call (it takes effect), keep its answer, then misbehave or send it late.
        answer: list[Message] = []

        async def keep(message: Message) -> None:
            answer.append(message)

        await self._app(scope, receive, keep)
        if await _misbehave(after, scope, receive, send):
            return
        for message in answer:
            await send(message)


async def _misbehave(rules: list[HttpFault], scope: Scope, receive: Receive, send: Send) -> bool:
    """Wait the rules' delays, then drop the connection or answer with an injected status; whether it answered."""
    delay = sum(rule.delay for rule in rules)
    if delay:
        await asyncio.sleep(delay)
    if any(rule.drop for rule in rules):
        # Headers announcing a body that never comes: the server then closes the connection, and
        # the client gets a transport error ("peer closed connection"), as on a reset.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
        return True
    failing = next((rule for rule in rules if rule.status is not None), None)
    if failing is None:
        return False
    await _injected(failing).__call__(scope, receive, send)
    return True


def _missing_key() -> ServiceError:
    return ServiceError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )


def _wrong_key() -> ServiceError:
    # Never echo the key that was sent: it could be a real one sent to the wrong server.
    return ServiceError(401, "Incorrect API key provided.", code="invalid_api_key")


def _injected(rule: HttpFault) -> Response:
    status = rule.status or 500
    if status == 429:
        message = "Rate limit reached (injected by the local fault plan)."
        exc = ServiceError(429, message, type="rate_limit_error", code="rate_limit_exceeded")
    elif status >= 500:
        message = "The server had an error processing your request (injected by the local fault plan)."
        exc = ServiceError(status, message, type="server_error")
    else:
        exc = ServiceError(status, f"Injected HTTP {status} (local fault plan).")
    response = _error(exc)
    if rule.retry_after is not None:
        response.headers["Retry-After"] = str(math.ceil(rule.retry_after))
        response.headers["retry-after-ms"] = str(int(rule.retry_after * 1000))
    return response


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(exc: ServiceError) -> Response:
    return _json(exc.body(), exc.status_code)


def _unread_body_error(exc: ServiceError) -> Response:
    """An error answered before the request body was read: close the connection after it, so
    the server does not go on receiving (and discarding) the rest of an oversized body."""
    response = _error(exc)
    response.headers["Connection"] = "close"
    return response


def _int_param(query: Any, name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ServiceError(400, f"'{name}' must be an integer, got {raw!r}.", param=name) from None


async def _read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object body, refusing (413) bodies over 1 MB without reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > _JSON_BODY_LIMIT:
        raise ServiceError(413, "Request body too large.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _JSON_BODY_LIMIT:
            raise ServiceError(413, "Request body too large.")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise ServiceError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ServiceError(400, "The request body must be a JSON object.")
    return body


async def _receive_upload(request: Request, engine: BatchEngine) -> tuple[dict[str, str], tuple[str, Path] | None]:
    """Stream a multipart upload: small fields into memory, the file part to a temp file.

    Returns the fields and (client file name, temp path) of the ``file`` part. Raises a 413
    ServiceError as soon as the file part passes the profile's size limit.
    """
    limit = engine.profile.max_file_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
        raise ServiceError(413, f"File is larger than the {limit} bytes allowed.", code="file_too_large", param="file")
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ServiceError(400, "Uploads must be multipart/form-data with a 'file' part and a 'purpose' field.")

    receiver = _MultipartReceiver(engine.store.tmp_path(), limit)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if receiver.too_big:
                raise ServiceError(413, f"File is larger than the {limit} bytes allowed.", code="file_too_large", param="file")
        parser.finalize()
    except ServiceError:
        receiver.discard()
        raise
    except Exception as exc:  # a malformed multipart body
        receiver.discard()
        raise ServiceError(400, f"Malformed multipart body: {exc}") from None
    receiver.close()
    upload = (receiver.filename, receiver.path) if receiver.filename is not None else None
    return receiver.fields, upload


class _MultipartReceiver:
    """Callbacks for python-multipart's streaming parser."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.too_big = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._file: BinaryIO | None = None
        self._size = 0

    def callbacks(self) -> dict[str, Callable[..., Any]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._value = bytearray()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file" and b"filename" in options and self._file is None and self.filename is None:
            self.filename = options[b"filename"].decode("utf-8", "replace")
            self._file = self.path.open("wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._size += end - start
            if self._size > self.limit:
                self.too_big = True
                return
            self._file.write(data[start:end])
        elif len(self._value) + end - start <= _FORM_FIELD_LIMIT:
            self._value += data[start:end]

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

