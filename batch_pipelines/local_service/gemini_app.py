"""The HTTP face of the service posing as Gemini: Batch Mode and Files under ``/v1`` and ``/v1beta``.

    POST /{v}/models/{model}:batchGenerateContent      GET /{v}/batches (pageSize, pageToken)
    GET|DELETE /{v}/batches/{id}                       POST /{v}/batches/{id}:cancel
    POST /upload/{v}/files (resumable: start, then upload / upload, finalize at the URL it gives)
    GET|DELETE /{v}/files/{id}                         GET /{v}/files/{id}:download?alt=media

``v`` is ``v1`` (the google-genai SDK's default) or ``v1beta`` (Google's docs): both are served
alike. :func:`create_app` serves these routes when its engine poses as a profile of the
``gemini`` protocol; the guard then takes the key from ``x-goog-api-key`` and every error has
Google's shape. Only 200 is ever a success (the SDK raises on any other status).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from batch_pipelines.local_service.engine import BatchEngine
from batch_pipelines.local_service.errors import ServiceError
from batch_pipelines.local_service.gemini_batches import GeminiBatches
from batch_pipelines.local_service.gemini_objects import gemini_error_body
from batch_pipelines.local_service.json_responses import json_response

__all__ = ["API_VERSIONS", "KEY_HEADER", "gemini_error_response", "gemini_routes", "upload_session_call"]

#: The URL versions served: the SDK's default and the docs'.
API_VERSIONS = ("v1", "v1beta")
#: Where Gemini clients send the key.
KEY_HEADER = "x-goog-api-key"
#: Room for the create's envelope around the profile's inline requests.
_ENVELOPE_BYTES = 1024 * 1024

ReadJson = Callable[[Request, int], Awaitable[dict[str, Any]]]


def upload_session_call(scope: Any) -> bool:
    """A chunk sent to an upload session's URL: the SDK sends no key there (the session id, 128
    random bits the start answered to a keyed call, is the credential)."""
    return str(scope.get("path", "")).startswith("/upload/") and b"upload_id=" in scope.get("query_string", b"")


def gemini_error_response(exc: ServiceError) -> Response:
    status, body = gemini_error_body(exc)
    return json_response(body, status)


def gemini_routes(engine: BatchEngine, read_json: ReadJson) -> list[Route]:
    batches = GeminiBatches(engine)
    inline_limit = (engine.profile.max_inline_bytes or engine.profile.max_file_bytes) + _ENVELOPE_BYTES

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Response:
        try:
            return json_response(await run_in_threadpool(fn, *args, **kwargs))
        except ServiceError as exc:
            return gemini_error_response(exc)

    def action(request: Request, name: str) -> tuple[str, str]:
        """``id:verb`` of a path parameter: (id, verb); verb is '' for none."""
        value = request.path_params[name]
        head, _, verb = value.partition(":")
        return head, verb

    async def create(request: Request) -> Response:
        model, verb = action(request, "model_action")
        if verb != "batchGenerateContent":
            return gemini_error_response(ServiceError(404, f"Method {verb or 'none'} of models/{model} is not served here."))
        try:
            body = await read_json(request, inline_limit)
        except ServiceError as exc:
            response = gemini_error_response(exc)
            response.headers["Connection"] = "close"  # do not go on receiving an oversized body
            return response
        return await call(batches.create, model, body)

    async def list_batches(request: Request) -> Response:
        q = request.query_params
        try:
            size = int(q["pageSize"]) if "pageSize" in q else None
        except ValueError:
            return gemini_error_response(ServiceError(400, f"pageSize must be an integer, got {q.get('pageSize')!r}."))
        return await call(batches.list, page_size=size, page_token=q.get("pageToken"))

    async def batch(request: Request) -> Response:
        batch_id, verb = action(request, "batch_action")
        if request.method == "POST" and verb == "cancel":
            return await call(batches.cancel, batch_id)
        if request.method == "GET" and not verb:
            return await call(batches.retrieve, batch_id)
        if request.method == "DELETE" and not verb:
            return await call(batches.delete, batch_id)
        return gemini_error_response(ServiceError(404, f"Invalid URL ({request.method} {request.url.path})"))

    async def file(request: Request) -> Response:
        file_id, verb = action(request, "file_action")
        name = f"files/{file_id}"
        if request.method == "GET" and verb == "download":
            try:
                lines = await run_in_threadpool(batches.download, name)
            except ServiceError as exc:
                return gemini_error_response(exc)
            return StreamingResponse(iterate_in_threadpool(lines), media_type="application/octet-stream")
        if request.method == "GET" and not verb:
            return await call(batches.get_file, name)
        if request.method == "DELETE" and not verb:
            return await call(batches.delete_file, name)
        return gemini_error_response(ServiceError(404, f"Invalid URL ({request.method} {request.url.path})"))

    async def upload(request: Request) -> Response:
        upload_id = request.query_params.get("upload_id")
        try:
            if upload_id is None:
                return await _start_upload(request, batches, read_json)
            return await _upload_chunk(request, batches, upload_id)
        except ServiceError as exc:
            response = gemini_error_response(exc)
            response.headers["Connection"] = "close"
            return response

    routes = []
    for v in API_VERSIONS:
        routes += [
            Route(f"/{v}/models/{{model_action}}", create, methods=["POST"]),
            Route(f"/{v}/batches", list_batches, methods=["GET"]),
            Route(f"/{v}/batches/{{batch_action}}", batch, methods=["GET", "POST", "DELETE"]),
            Route(f"/{v}/files/{{file_action}}", file, methods=["GET", "DELETE"]),
            Route(f"/upload/{v}/files", upload, methods=["POST"]),
        ]
    return routes


async def _start_upload(request: Request, batches: GeminiBatches, read_json: ReadJson) -> Response:
    """``X-Goog-Upload-Command: start``: a session, its absolute URL in ``X-Goog-Upload-URL``."""
    headers = request.headers
    if headers.get("x-goog-upload-protocol") != "resumable" or headers.get("x-goog-upload-command") != "start":
        raise ServiceError(400, "Uploads are resumable: send X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start.")
    body = await read_json(request, _ENVELOPE_BYTES) if headers.get("content-length", "0") != "0" else {}
    meta = body.get("file") if isinstance(body.get("file"), dict) else {}
    declared = headers.get("x-goog-upload-header-content-length", meta.get("sizeBytes"))
    try:
        size = int(declared)
    except (TypeError, ValueError):
        raise ServiceError(400, "X-Goog-Upload-Header-Content-Length: the upload's size in bytes is required.") from None
    display = meta.get("displayName") or meta.get("display_name") or ""
    upload_id = await run_in_threadpool(batches.start_upload, str(display), size)
    url = f"{str(request.base_url).rstrip('/')}{request.url.path}?upload_id={upload_id}&upload_protocol=resumable"
    return Response(b"", status_code=200, headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})


async def _upload_chunk(request: Request, batches: GeminiBatches, upload_id: str) -> Response:
    """One chunk at the session's URL (``upload`` or ``upload, finalize``; ``query`` tells the offset)."""
    session = batches.upload_session(upload_id)
    commands = {c.strip() for c in request.headers.get("x-goog-upload-command", "").split(",") if c.strip()}
    if commands == {"query"}:
        return Response(b"", headers={"X-Goog-Upload-Status": "active", "X-Goog-Upload-Size-Received": str(session.received)})
    if not commands or not commands <= {"upload", "finalize"}:
        raise ServiceError(400, "X-Goog-Upload-Command must be upload, 'upload, finalize', finalize or query.")
    if "upload" in commands:
        offset = request.headers.get("x-goog-upload-offset")
        if offset is None or not offset.isdigit() or int(offset) != session.received:
            raise ServiceError(400, f"X-Goog-Upload-Offset must be {session.received}, the bytes received so far (got {offset!r}).")
        with session.path.open("ab") as fh:
            async for chunk in request.stream():
                session.received += len(chunk)
                if session.received > session.size:
                    raise ServiceError(400, f"The upload goes past its declared {session.size} bytes.")
                fh.write(chunk)
    if "finalize" not in commands:
        return Response(b"", headers={"X-Goog-Upload-Status": "active"})
    try:
        stored = await run_in_threadpool(batches.finish_upload, upload_id)
    except ServiceError as exc:
        response = gemini_error_response(exc)
        response.headers["X-Goog-Upload-Status"] = "final"
        return response
    response = json_response(stored)
    response.headers["X-Goog-Upload-Status"] = "final"
    return response
