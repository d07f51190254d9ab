"""Engine batches as the JSON objects Anthropic's Message Batches API answers with.

The engine keeps every batch the OpenAI way (an input file, output and error files, OpenAI's
statuses); posing as Anthropic, the service shows them as ``message_batch`` objects and their
result lines as Anthropic's, translated here and nowhere else:

- ids: ``batch_<hex>`` is shown as ``msgbatch_<hex>``;
- status: validating, in_progress and finalizing are ``in_progress``; cancelling is
  ``canceling``; every terminal status is ``ended``;
- times: RFC 3339 strings, null until they apply;
- result lines: a 2xx answer is ``succeeded`` with its message, an error answer ``errored`` with
  Anthropic's error object, a row the batch never ran ``expired`` or ``canceled``;
- errors: ``{"type": "error", "error": {"type", "message"}, "request_id"}``, the type by status.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from batch_pipelines.local_service.errors import ServiceError

__all__ = [
    "RESULT_KINDS",
    "anthropic_error_body",
    "engine_batch_id",
    "message_batch_id",
    "message_batch_json",
    "processing_status",
    "result_line",
]

_ENGINE_PREFIX, _ANTHROPIC_PREFIX = "batch_", "msgbatch_"
#: The kinds of result an Anthropic result line has, as its request_counts name them.
RESULT_KINDS = ("succeeded", "errored", "canceled", "expired")
_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
_END_KINDS = {"batch_expired": "expired", "batch_cancelled": "canceled"}
#: Anthropic's error type for each HTTP status (its docs' table); 5xx other than 529 are api_error.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def message_batch_id(engine_id: str) -> str:
    return _ANTHROPIC_PREFIX + engine_id.removeprefix(_ENGINE_PREFIX)


def engine_batch_id(batch_id: str) -> str:
    """The engine's id for a ``msgbatch_`` id (anything else maps to an id no batch has)."""
    if not batch_id.startswith(_ANTHROPIC_PREFIX):
        return "unknown"
    return _ENGINE_PREFIX + batch_id.removeprefix(_ANTHROPIC_PREFIX)


def processing_status(engine_status: str) -> str:
    if engine_status in _ENDED:
        return "ended"
    return "canceling" if engine_status == "cancelling" else "in_progress"


def message_batch_json(batch: Mapping[str, Any], counts: Mapping[str, int], results_url: str | None) -> dict[str, Any]:
    """``batch`` (the engine's OpenAI-shaped dict) as a MessageBatch; ``counts`` by result kind and
    ``processing``; ``results_url`` is shown once the batch has ended."""
    status = processing_status(batch["status"])
    ended_at = next((batch[k] for k in ("completed_at", "failed_at", "expired_at", "cancelled_at") if batch.get(k)), None)
    return {
        "id": message_batch_id(batch["id"]),
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {
            "processing": counts.get("processing", 0),
            **{kind: counts.get(kind, 0) for kind in RESULT_KINDS},
        },
        "created_at": _rfc3339(batch["created_at"]),
        "expires_at": _rfc3339(batch["expires_at"]),
        "ended_at": _rfc3339(ended_at) if status == "ended" else None,
        "cancel_initiated_at": _rfc3339(batch.get("cancelling_at")),
        "archived_at": None,
        "results_url": results_url if status == "ended" else None,
    }


def result_line(line: Mapping[str, Any]) -> tuple[str, bytes]:
    """An engine output or error line as an Anthropic result line: (its kind, its bytes)."""
    response = line.get("response")
    result: dict[str, Any]
    if response is not None and 200 <= response["status_code"] < 300:
        result = {"type": "succeeded", "message": response["body"]}
    elif response is not None:
        status = response["status_code"]
        error = (response.get("body") or {}).get("error") or {}
        message = error.get("message") or f"HTTP {status}"
        result = {"type": "errored", "error": _error_object(status, str(message))}
    else:
        code = (line.get("error") or {}).get("code")
        kind = _END_KINDS.get(code)
        if kind is None:  # no HTTP answer (an upstream timeout): an API error to the client
            message = (line.get("error") or {}).get("message") or "the request got no answer"
            result = {"type": "errored", "error": _error_object(500, str(message))}
        else:
            result = {"type": kind}
    return result["type"], orjson.dumps({"custom_id": line["custom_id"], "result": result})


def anthropic_error_body(exc: ServiceError) -> dict[str, Any]:
    """What Anthropic answers for ``exc``: its shape, the error type its status stands for."""
    return {**_error_object(exc.status_code, exc.message), "request_id": "req_local" + secrets.token_hex(8)}


def _error_object(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _rfc3339(epoch: int | float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
