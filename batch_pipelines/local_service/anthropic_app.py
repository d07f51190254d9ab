"""The HTTP face of the service posing as Anthropic: Message Batches under ``/v1/messages/batches``.

    POST /v1/messages/batches                      GET /v1/messages/batches (limit, after_id, before_id)
    GET /v1/messages/batches/{id}                  POST /v1/messages/batches/{id}/cancel
    DELETE /v1/messages/batches/{id}               GET /v1/messages/batches/{id}/results (JSONL)

:func:`create_app` serves these routes when its engine poses as a profile of the ``anthropic``
protocol; the guard then takes the key as ``x-api-key`` or a bearer token and every error has
Anthropic's shape. ``results_url`` is absolute, on the host the client reached: the SDK fetches
it verbatim.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from batch_pipelines.local_service.anthropic_batches import MessageBatches
from batch_pipelines.local_service.anthropic_objects import anthropic_error_body
from batch_pipelines.local_service.engine import BatchEngine
from batch_pipelines.local_service.errors import ServiceError
from batch_pipelines.local_service.json_responses import json_response

__all__ = ["anthropic_error_response", "anthropic_routes"]

ReadJson = Callable[[Request, int], Awaitable[dict[str, Any]]]


def anthropic_error_response(exc: ServiceError) -> Response:
    return json_response(anthropic_error_body(exc), exc.status_code)


def anthropic_routes(engine: BatchEngine, read_json: ReadJson) -> list[Route]:
    batches = MessageBatches(engine)
    body_limit = engine.profile.max_file_bytes

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/v1"

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Response:
        try:
            return json_response(await run_in_threadpool(fn, *args, **kwargs))
        except ServiceError as exc:
            return anthropic_error_response(exc)

    async def create(request: Request) -> Response:
        try:
            body = await read_json(request, body_limit)
        except ServiceError as exc:
            response = anthropic_error_response(exc)
            response.headers["Connection"] = "close"  # do not go on receiving an oversized body
            return response
        return await call(batches.create, body, base(request))

    async def list_batches(request: Request) -> Response:
        q = request.query_params
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            return anthropic_error_response(ServiceError(400, f"limit: must be an integer, got {q.get('limit')!r}."))
        return await call(batches.list, base(request), limit=limit, after_id=q.get("after_id"), before_id=q.get("before_id"))

    async def retrieve(request: Request) -> Response:
        return await call(batches.retrieve, request.path_params["batch_id"], base(request))

    async def cancel(request: Request) -> Response:
        return await call(batches.cancel, request.path_params["batch_id"], base(request))

    async def delete(request: Request) -> Response:
        return await call(batches.delete, request.path_params["batch_id"])

    async def results(request: Request) -> Response:
        try:
            lines = await run_in_threadpool(lambda: _started(batches.results(request.path_params["batch_id"])))
        except ServiceError as exc:
            return anthropic_error_response(exc)
        return StreamingResponse(iterate_in_threadpool(lines), media_type="application/binary")

    return [
        Route("/v1/messages/batches", create, methods=["POST"]),
        Route("/v1/messages/batches", list_batches, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}", retrieve, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}", delete, methods=["DELETE"]),
        Route("/v1/messages/batches/{batch_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/messages/batches/{batch_id}/results", results, methods=["GET"]),
    ]


def _started(lines: Iterator[bytes]) -> Iterator[bytes]:
    """A generator run up to its first line, so that its checks (an unknown id, a batch not yet
    ended) raise before the response has begun; the lines, with the first put back."""
    try:
        first = next(lines)
    except StopIteration:
        return iter(())
    return itertools.chain([first], lines)
