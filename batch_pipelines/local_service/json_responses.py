"""The HTTP face's answers: JSON bodies, and :class:`ServiceError` as OpenAI's error body with its status."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from batch_pipelines.local_service.errors import ServiceError

__all__ = ["error_response", "json_response", "unread_body_error"]


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_response(exc: ServiceError) -> Response:
    return json_response(exc.body(), exc.status_code)


def unread_body_error(exc: ServiceError) -> Response:
    """An error answered before the request body was read: close the connection after it, so
    the server does not go on receiving (and discarding) the rest of an oversized body."""
    response = error_response(exc)
    response.headers["Connection"] = "close"
    return response
