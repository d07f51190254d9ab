"""Engine batches and files as the JSON objects Gemini's Batch Mode answers with.

The engine keeps every batch the OpenAI way (an input file, output and error files, OpenAI's
statuses); posing as Gemini, the service shows them as long-running operations and their lines as
Gemini's, translated here and nowhere else:

- names: engine ``batch_<hex>`` is ``batches/<hex>``, engine ``file-<hex>`` is ``files/<hex>``,
  and a file batch's responses are the file ``files/batch-<hex>`` (one file, every outcome in it:
  Gemini has no separate error file; 30 characters, under the 40 one SDK can download);
- state: validating is ``BATCH_STATE_PENDING``; in_progress, finalizing and cancelling are
  ``BATCH_STATE_RUNNING``; completed, failed, expired and cancelled are ``SUCCEEDED``, ``FAILED``,
  ``EXPIRED`` and ``CANCELLED``;
- times: RFC 3339 strings;
- response lines: a 2xx answer is ``{"key", "response"}``, anything else ``{"key", "error":
  {code, message, status}}``: a row the batch never ran is ``DEADLINE_EXCEEDED`` (expired) or
  ``CANCELLED``;
- errors: ``{"error": {"code", "message", "status"}}``, the status by HTTP code; a wrong key is
  Google's 400 ``INVALID_ARGUMENT`` (``API_KEY_INVALID``), a missing one 403 ``PERMISSION_DENIED``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from batch_pipelines.local_service.errors import ServiceError

__all__ = [
    "batch_name",
    "engine_batch_id",
    "engine_file_id",
    "file_json",
    "file_name",
    "gemini_error_body",
    "gemini_state",
    "operation_json",
    "responses_file_name",
    "responses_batch_id",
    "response_line",
]

_ENGINE_BATCH, _ENGINE_FILE = "batch_", "file-"
_BATCHES, _FILES, _RESPONSES = "batches/", "files/", "batch-"
_STATES = {
    "validating": "BATCH_STATE_PENDING",
    "in_progress": "BATCH_STATE_RUNNING",
    "finalizing": "BATCH_STATE_RUNNING",
    "cancelling": "BATCH_STATE_RUNNING",
    "completed": "BATCH_STATE_SUCCEEDED",
    "failed": "BATCH_STATE_FAILED",
    "expired": "BATCH_STATE_EXPIRED",
    "cancelled": "BATCH_STATE_CANCELLED",
}
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
#: google.rpc.Code names for the HTTP statuses the service answers with.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
#: What a row the batch never ran gets, by the engine's end code.
_UNRUN = {
    "batch_expired": (504, "DEADLINE_EXCEEDED", "The batch expired before this request ran."),
    "batch_cancelled": (499, "CANCELLED", "The batch was cancelled before this request ran."),
}


def batch_name(engine_id: str) -> str:
    return _BATCHES + engine_id.removeprefix(_ENGINE_BATCH)


def engine_batch_id(batch_id: str) -> str:
    """The engine id of ``batches/<hex>`` or bare ``<hex>``; ServiceError(404) for anything else."""
    hex_id = batch_id.removeprefix(_BATCHES)
    if len(hex_id) != 24 or not all(c in "0123456789abcdef" for c in hex_id):
        raise ServiceError(404, f"Batch {batch_id!r} not found.")
    return _ENGINE_BATCH + hex_id


def file_name(engine_id: str) -> str:
    return _FILES + engine_id.removeprefix(_ENGINE_FILE)


def engine_file_id(name: str) -> str:
    """The engine id of an uploaded ``files/<hex>``; ServiceError(404) for anything else."""
    hex_id = name.removeprefix(_FILES)
    if len(hex_id) != 24 or not all(c in "0123456789abcdef" for c in hex_id):
        raise ServiceError(404, f"File {name!r} not found.")
    return _ENGINE_FILE + hex_id


def responses_file_name(engine_batch: str) -> str:
    return _FILES + _RESPONSES + engine_batch.removeprefix(_ENGINE_BATCH)


def responses_batch_id(name: str) -> str | None:
    """The engine batch whose responses file ``name`` is, or None when it is an uploaded file."""
    hex_id = name.removeprefix(_FILES)
    if not hex_id.startswith(_RESPONSES):
        return None
    return engine_batch_id(hex_id.removeprefix(_RESPONSES))


def gemini_state(engine_status: str) -> str:
    return _STATES[engine_status]


def operation_json(batch: Mapping[str, Any], stats: Mapping[str, int], output: dict[str, Any] | None) -> dict[str, Any]:
    """``batch`` (the engine's OpenAI-shaped dict, its ``metadata`` holding the Gemini batch's model,
    displayName and input) as the long-running operation Gemini answers; ``stats`` its batchStats,
    ``output`` where its responses are once it has ended."""
    meta = batch.get("metadata") or {}
    status = batch["status"]
    ended_at = next((batch[k] for k in ("completed_at", "failed_at", "expired_at", "cancelled_at") if batch.get(k)), None)
    updated = max(v for k, v in batch.items() if k.endswith("_at") and isinstance(v, int | float) and k != "expires_at")
    source = meta.get("input", "")
    input_config = {"fileName": source} if source.startswith(_FILES) else {"requests": {}}
    body: dict[str, Any] = {
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
        "model": meta.get("model"),
        "displayName": meta.get("displayName", ""),
        "inputConfig": input_config,
        "state": gemini_state(status),
        "createTime": rfc3339(batch["created_at"]),
        "updateTime": rfc3339(updated),
        "batchStats": {k: str(v) for k, v in stats.items()},
    }
    if status in ENDED:
        body["endTime"] = rfc3339(ended_at or updated)
    if output is not None:
        body["output"] = output
    operation: dict[str, Any] = {"name": batch_name(batch["id"]), "metadata": body, "done": status in ENDED}
    if status == "failed":
        errors = (batch.get("errors") or {}).get("data") or [{}]
        operation["error"] = {"code": 3, "message": errors[0].get("message") or "The batch failed validation."}
    if status in ENDED and status != "failed":
        operation["response"] = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput", **(output or {})}
    return operation


def file_json(row: Mapping[str, Any], display_name: str, mime_type: str) -> dict[str, Any]:
    """An uploaded file as Gemini's File object."""
    created = rfc3339(row["created_at"])
    return {
        "name": file_name(row["id"]),
        "displayName": display_name,
        "mimeType": mime_type,
        "sizeBytes": str(row["bytes"]),
        "createTime": created,
        "updateTime": created,
        "expirationTime": rfc3339(row["created_at"] + 48 * 3600),
        "state": "ACTIVE",
        "source": "UPLOADED",
    }


def response_line(line: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """An engine output or error line as a Gemini response record without its key: (succeeded, record)."""
    response = line.get("response")
    if response is not None and 200 <= response["status_code"] < 300:
        return True, {"response": response["body"]}
    if response is not None:
        status = response["status_code"]
        error = (response.get("body") or {}).get("error") or {}
        return False, {"error": _status(status, str(error.get("message") or f"HTTP {status}"))}
    code = (line.get("error") or {}).get("code")
    status, name, message = _UNRUN.get(code, (504, "DEADLINE_EXCEEDED", None))
    text = message or (line.get("error") or {}).get("message") or "The request got no answer in time."
    return False, {"error": {"code": status, "message": str(text), "status": name}}


def gemini_error_body(exc: ServiceError) -> tuple[int, dict[str, Any]]:
    """What Google answers for ``exc``: (HTTP status, ``{"error": {code, message, status}}``)."""
    if exc.code == "invalid_api_key":
        body = _status(400, "API key not valid. Please pass a valid API key.")
        body["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]
        return 400, {"error": body}
    if exc.status_code == 401:  # no key at all: Google's answer to an unregistered caller
        return 403, {"error": _status(403, "Method doesn't allow unregistered callers. Please use an API key.")}
    return exc.status_code, {"error": _status(exc.status_code, exc.message)}


def _status(code: int, message: str) -> dict[str, Any]:
    name = _STATUS_NAMES.get(code) or ("INTERNAL" if code >= 500 else "FAILED_PRECONDITION")
    return {"code": code, "message": message, "status": name}


def rfc3339(epoch: int | float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
