"""What travels to and from Gemini's Batch Mode: a shard as keyed requests, the batch's tags in
its ``displayName``, and an operation as a :class:`~batch_pipelines.providers.types.Batch`.

Pure functions of bytes and payloads, no HTTP: :mod:`batch_pipelines.providers.gemini` sends them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from pydantic import ValidationError

from batch_pipelines.profiles import GENERATE_CONTENT, ProviderProfile
from batch_pipelines.providers.errors import APIResponseValidationError
from batch_pipelines.providers.types import Batch, BatchError, BatchStatus, RequestCounts, rfc3339_epoch

__all__ = ["display_name", "inline_item", "keyed_answer", "keyed_requests", "parse_operation", "tags_of"]


# ---- shard -> requests ---------------------------------------------------------------------------


def keyed_requests(path: Path, dest: Path, profile: ProviderProfile) -> tuple[str, int]:
    """A shard's lines as Gemini's ``{"key", "request"}`` lines in ``dest`` (the model out of every
    request): (the one model, the bytes written). ValueError naming the line, before anything is
    sent, for a line that is no request, a second model, or a file over the profile's limit."""
    model: str | None = None
    size = count = 0
    with path.open("rb") as src, dest.open("wb") as out:
        for n, raw in enumerate(src, 1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
                key, body = line["custom_id"], dict(line["body"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path.name} line {n} is not a request line ({exc})") from None
            line_model = body.pop("model", None)
            if not isinstance(line_model, str) or not line_model:
                raise ValueError(f"{path.name} line {n} names no model (body.model)")
            if model is None:
                model = line_model
            elif line_model != model:
                raise ValueError(f"{path.name} line {n}: model {line_model!r} is not the batch's {model!r}; {profile.name} takes one model per batch")
            item = orjson.dumps({"key": key, "request": body}) + b"\n"
            size += len(item)
            count += 1
            out.write(item)
    if model is None:
        raise ValueError(f"{path.name} holds no requests")
    if size > profile.max_file_bytes:
        raise ValueError(f"{path.name} makes a {size}-byte batch; {profile.name} takes at most {profile.max_file_bytes} bytes")
    most = profile.max_requests_per_file
    if most is not None and count > most:
        raise ValueError(f"{path.name} holds {count} requests; {profile.name} takes at most {most} a batch")
    return model.removeprefix("models/"), size


def inline_item(raw: bytes) -> bytes:
    line = orjson.loads(raw)
    return orjson.dumps({"request": line["request"], "metadata": {"key": line["key"]}})


def keyed_answer(answer: Mapping[str, Any]) -> bytes:
    """An inline answer as a response-file line: ``{"key", "response" | "error"}``."""
    key = (answer.get("metadata") or {}).get("key")
    kind = "response" if answer.get("response") is not None else "error"
    return orjson.dumps({"key": key, kind: answer.get(kind)}) + b"\n"


# ---- tags <-> displayName -------------------------------------------------------------------------


def display_name(metadata: Mapping[str, str]) -> str:
    """Batch tags as a displayName: URL-encoded pairs in key order (``bp_partition=2024-01-01&...``)."""
    return urlencode(sorted(metadata.items()))


def tags_of(name: Any) -> dict[str, str]:
    """The tags a displayName carries; none for a name that is free text (not URL-encoded pairs)."""
    if not isinstance(name, str) or "=" not in name:
        return {}
    try:
        return dict(parse_qsl(name, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        return {}


# ---- payload -> record ---------------------------------------------------------------------------
_STATES = {
    "PENDING": BatchStatus.VALIDATING,
    "RUNNING": BatchStatus.IN_PROGRESS,
    "SUCCEEDED": BatchStatus.COMPLETED,
    "FAILED": BatchStatus.FAILED,
    "CANCELLED": BatchStatus.CANCELLED,
    "EXPIRED": BatchStatus.EXPIRED,
}
_ENDS = {BatchStatus.COMPLETED: "completed_at", BatchStatus.FAILED: "failed_at", BatchStatus.EXPIRED: "expired_at",
         BatchStatus.CANCELLED: "cancelled_at"}  # fmt: skip


def parse_operation(payload: Mapping[str, Any]) -> Batch:
    """Normalize a batch operation (``BATCH_STATE_*``, or the SDK's ``JOB_STATE_*``); APIResponseValidationError if it is not one."""
    raw = dict(payload)
    try:
        meta = dict(raw["metadata"])
        state = str(meta["state"]).removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_")
        if state not in _STATES:
            raise ValueError(f"unknown state {meta['state']!r}")
        status = _STATES[state]
        stats = meta.get("batchStats") or {}
        total, ok, failed = (int(stats.get(k) or 0) for k in ("requestCount", "successfulRequestCount", "failedRequestCount"))
        output = dict(meta.get("output") or {})
        if "inlinedResponses" in output:  # kept out of the record: read again when the results are downloaded
            output["inlinedResponses"] = {"inlinedResponses": "..."}
            meta["output"] = output
            raw["metadata"] = meta
        errors = ()
        if status == BatchStatus.FAILED and isinstance(raw.get("error"), Mapping):
            errors = (BatchError(code=str(raw["error"].get("code")), message=raw["error"].get("message")),)
        ended = rfc3339_epoch(meta.get("endTime"))
        return Batch(
            id=str(raw["name"]).removeprefix("batches/"),
            status=status,
            endpoint=GENERATE_CONTENT,
            completion_window="24h",
            input_file_id=(meta.get("inputConfig") or {}).get("fileName"),
            output_file_id=output.get("responsesFile"),
            request_counts=RequestCounts(total=total, completed=ok, failed=failed),
            errors=errors,
            metadata=tags_of(meta.get("displayName")),
            created_at=rfc3339_epoch(meta.get("createTime")),
            in_progress_at=rfc3339_epoch(meta.get("createTime")) if status != BatchStatus.VALIDATING else None,
            raw=raw,
            **({_ENDS[status]: ended} if status in _ENDS and ended is not None else {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError, ValidationError) as exc:
        raise APIResponseValidationError(f"batch operation {raw.get('name')!r} does not parse: {exc}") from None
