"""Stored rows as the JSON objects OpenAI answers with: ``FileObject``, ``Batch`` and list pages.

The engine returns exactly these dicts, so the HTTP face serializes them unchanged and the
embedded provider parses them with the same code as a real service's answers.
"""

from __future__ import annotations

from typing import Any

import orjson

from batch_pipelines.local_service.batch_usage import usage_json
from batch_pipelines.local_service.store import ACTIVE_STATUSES

__all__ = ["batch_json", "file_json", "file_row_json", "page"]

_TIMESTAMPS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def file_json(
    file_id: str, filename: str, purpose: str, size: int, created_at: int, expires_at: int | None = None
) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": expires_at,
        "status_details": None,
    }


def file_row_json(row: Any) -> dict[str, Any]:
    return file_json(row["id"], row["filename"], row["purpose"], row["bytes"], row["created_at"], row["expires_at"])


def batch_json(row: Any) -> dict[str, Any]:
    errors = row["errors"]
    metadata = row["metadata"]
    batch: dict[str, Any] = {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "errors": {"object": "list", "data": orjson.loads(errors)} if errors else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
    }
    batch.update({name: row[name] for name in _TIMESTAMPS})
    batch["request_counts"] = {"total": row["total"], "completed": row["completed"], "failed": row["failed"]}
    batch["metadata"] = orjson.loads(metadata) if metadata else None
    batch["model"] = row["model"]
    # Usage is the sum over the answered rows: shown once the batch has ended and the sum is final
    # (never for a batch created before the sums were kept: NULL).
    final = row["status"] not in ACTIVE_STATUSES and row["input_tokens"] is not None
    batch["usage"] = usage_json(row) if final else None
    return batch


def page(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
