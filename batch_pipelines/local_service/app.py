"""The HTTP face of the local service: OpenAI's Files and Batches API under ``/v1``, as routes.

:func:`create_app` serves a :class:`~batch_pipelines.local_service.engine.BatchEngine`:

    POST /v1/files (multipart: file, purpose, expires_after)   GET /v1/files   GET|DELETE /v1/files/{id}
    GET /v1/files/{id}/content                   POST /v1/batches GET /v1/batches (after, limit)
    GET /v1/batches/{id}                         POST /v1/batches/{id}/cancel
    GET|PUT /v1/_local/faults                    the service-wide fault plan (local extension)

Posing as a profile of the ``anthropic`` protocol it serves Anthropic's Message Batches instead
(``anthropic_app.py``), over the same engine, with the same faults; posing as one of the
``gemini`` protocol, Gemini's Batch Mode and Files under ``/v1`` and ``/v1beta`` (``gemini_app.py``).

Each route parses its request, calls the engine in a thread and answers its JSON; errors have
OpenAI's shape ``{"error": {message, type, param, code}}``, unknown ids and routes are 404s in
that shape. In front of every route, ``guard.py`` checks the bearer key and injects HTTP faults;
uploads are streamed by ``uploads.py`` (413 past the profile's ``max_file_bytes``). The client's
file name is kept for display only; stored files are named by generated ids.

Tests change the faults at runtime with ``app.state.faults.set(plan)`` (which also sets the
engine's row-level plan for new batches) or, over HTTP, ``PUT /v1/_local/faults`` with the plan as
JSON body; either resets the "first N calls" counters.

:func:`create_realtime_app` is a tiny real-time OpenAI-compatible server (chat completions,
responses, embeddings, completions, moderations) answering with a responder: a stand-in for a
user's own model server, used to test the forwarding responder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from batch_pipelines.local_service.anthropic_app import anthropic_error_response, anthropic_routes
from batch_pipelines.local_service.engine import BatchEngine
from batch_pipelines.local_service.errors import ServiceError
from batch_pipelines.local_service.gemini_app import KEY_HEADER as GEMINI_KEY_HEADER
from batch_pipelines.local_service.gemini_app import gemini_error_response, gemini_routes, upload_session_call
from batch_pipelines.local_service.faults import FaultPlan
from batch_pipelines.local_service.guard import Guard, HttpFaults
from batch_pipelines.local_service.json_responses import error_response, json_response, unread_body_error
from batch_pipelines.local_service.responders import DefaultResponder, Responder
from batch_pipelines.local_service.uploads import receive_upload
from batch_pipelines.profiles import ALL_ENDPOINTS

__all__ = ["create_app", "create_realtime_app"]

_JSON_BODY_LIMIT = 1024 * 1024


def create_app(engine: BatchEngine, *, api_key: str | None, faults: FaultPlan | None = None) -> Starlette:
    """The OpenAI-compatible Files + Batches API over ``engine``; ``faults`` defaults to the engine's plan."""
    http_faults = HttpFaults(faults if faults is not None else engine.faults, engine)

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Response:
        try:
            return json_response(await run_in_threadpool(fn, *args, **kwargs))
        except ServiceError as exc:
            return error_response(exc)

    async def upload_file(request: Request) -> Response:
        try:
            fields, upload = await receive_upload(request, path=engine.store.tmp_path(), limit=engine.profile.max_file_bytes)
        except ServiceError as exc:
            return unread_body_error(exc)
        if upload is None:
            return error_response(ServiceError(400, "Missing the 'file' part of the multipart form.", param="file"))
        filename, path = upload
        try:
            if not fields.get("purpose"):
                return error_response(ServiceError(400, "Missing the 'purpose' field.", param="purpose"))
            return await call(engine.create_file, filename, fields["purpose"], path, move=True, expires_after=_expires_after(fields))
        finally:
            path.unlink(missing_ok=True)  # moved into files/ on success; a leftover otherwise

    async def list_files(request: Request) -> Response:
        q = request.query_params
        try:
            limit = _int_param(q, "limit", 10000)
        except ServiceError as exc:
            return error_response(exc)
        return await call(engine.list_files, purpose=q.get("purpose"), after=q.get("after"), limit=limit, order=q.get("order", "desc"))

    async def get_file(request: Request) -> Response:
        return await call(engine.get_file, request.path_params["file_id"])

    async def delete_file(request: Request) -> Response:
        return await call(engine.delete_file, request.path_params["file_id"])

    async def file_content(request: Request) -> Response:
        try:
            path = await run_in_threadpool(engine.file_content_path, request.path_params["file_id"])
        except ServiceError as exc:
            return error_response(exc)
        return FileResponse(path, media_type="application/octet-stream")

    async def create_batch(request: Request) -> Response:
        try:
            body = await _read_json(request)
        except ServiceError as exc:
            return unread_body_error(exc)
        for key in ("input_file_id", "endpoint", "completion_window"):
            if key not in body:
                message = f"Missing required parameter: '{key}'."
                return error_response(ServiceError(400, message, code="missing_required_parameter", param=key))
        return await call(
            engine.create_batch,
            body["input_file_id"],
            body["endpoint"],
            body["completion_window"],
            body.get("metadata"),
            body.get("output_expires_after"),
        )

    async def list_batches(request: Request) -> Response:
        try:
            limit = _int_param(request.query_params, "limit", 20)
        except ServiceError as exc:
            return error_response(exc)
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
                return error_response(ServiceError(400, f"Invalid fault plan: {exc}"))
            except ServiceError as exc:
                return unread_body_error(exc)
            http_faults.set(plan)
        return json_response(http_faults.plan.model_dump(mode="json"))

    if engine.profile.protocol == "anthropic":
        routes = [*anthropic_routes(engine, _read_json), Route("/v1/_local/faults", faults_admin, methods=["GET", "PUT"])]
        app = _starlette(routes, anthropic_error_response)
        app.state.engine = engine
        app.state.faults = http_faults
        app.add_middleware(Guard, api_key=api_key, faults=http_faults, error_response=anthropic_error_response, accept_x_api_key=True)
        return app

    if engine.profile.protocol == "gemini":
        routes = [*gemini_routes(engine, _read_json), Route("/v1/_local/faults", faults_admin, methods=["GET", "PUT"])]
        app = _starlette(routes, gemini_error_response)
        app.state.engine = engine
        app.state.faults = http_faults
        app.add_middleware(
            Guard, api_key=api_key, faults=http_faults, error_response=gemini_error_response,
            key_header=GEMINI_KEY_HEADER, keyless=upload_session_call,
        )
        return app

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
    app.add_middleware(Guard, api_key=api_key, faults=http_faults)
    return app


def create_realtime_app(responder: Responder | None = None, *, api_key: str | None = None) -> Starlette:
    """A real-time OpenAI-compatible endpoint per batch endpoint, answered by ``responder``."""
    answer = responder or DefaultResponder()

    def route(endpoint: str) -> Route:
        async def handle(request: Request) -> Response:
            try:
                body = await _read_json(request)
            except ServiceError as exc:
                return unread_body_error(exc)
            status, payload = (await run_in_threadpool(answer.respond, endpoint, [body]))[0]
            if status == 0:  # no HTTP answer upstream: a gateway timeout here
                message = payload.get("message", "upstream failed")
                return error_response(ServiceError(504, message, type="server_error", code=payload.get("code")))
            return json_response(payload, status)

        return Route(endpoint, handle, methods=["POST"])

    app = _starlette([route(endpoint) for endpoint in ALL_ENDPOINTS])
    app.add_middleware(Guard, api_key=api_key, faults=None)
    return app


# ---- plumbing ----------------------------------------------------------------------------------


def _starlette(routes: list[Route], respond: Callable[[ServiceError], Response] = error_response) -> Starlette:
    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        message = f"Invalid URL ({request.method} {request.url.path})"
        return respond(ServiceError(status, message))

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    # Paths are served as written: a trailing slash is a 404, as at OpenAI, not a redirect that
    # echoes the client's decoded path (``/batches/%2e%2e%2f`` -> ``Location: /batches/..``).
    app.router.redirect_slashes = False
    return app


def _expires_after(fields: dict[str, str]) -> dict[str, Any] | None:
    """The form's expiry policy: the SDK sends ``expires_after[anchor]`` and ``expires_after[seconds]``."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    # A form's values are text: seconds as digits is the integer (anything else stays, to be refused).
    return {"anchor": anchor, "seconds": int(seconds) if seconds is not None and seconds.isdigit() else seconds}


def _int_param(query: Any, name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ServiceError(400, f"'{name}' must be an integer, got {raw!r}.", param=name) from None


async def _read_json(request: Request, limit: int = _JSON_BODY_LIMIT) -> dict[str, Any]:
    """The request's JSON object body, refusing (413) bodies over ``limit`` (1 MB) without reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, "Request body too large.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, "Request body too large.")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise ServiceError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ServiceError(400, "The request body must be a JSON object.")
    return body
