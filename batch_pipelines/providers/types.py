"""The typed records the provider interface speaks in: batches, their status and counts, files.

Normalized from each provider's payloads (``raw`` keeps the payload as it came), so the layers
above never read a provider's JSON. pydantic only: nothing here imports httpx or dagster.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Batch",
    "BatchError",
    "BatchStatus",
    "BatchUsage",
    "FileObject",
    "RESUBMIT_LATER_CODES",
    "RequestCounts",
    "ResultFiles",
    "TERMINAL_STATUSES",
    "rfc3339_epoch",
]


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)

#: Batch-level error codes of a batch refused for a reason that passes, having run nothing: the
#: provider's queue of enqueued tokens was full. Submitting the same file again later is the remedy.
RESUBMIT_LATER_CODES = frozenset({"token_limit_exceeded"})


class RequestCounts(BaseModel):
    model_config = ConfigDict(frozen=True)

    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(BaseModel):
    """One batch-level error, e.g. a line that failed validation or a full token queue."""

    model_config = ConfigDict(frozen=True)

    code: str | None = None
    message: str | None = None
    line: int | None = None
    param: str | None = None


class BatchUsage(BaseModel):
    """Tokens a batch used, summed over its requests (OpenAI: batches created since 2025-09-07)."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    #: Of the input, the tokens read from the provider's prompt cache.
    cached_tokens: int = 0
    output_tokens: int = 0
    #: Of the output, the reasoning tokens.
    reasoning_tokens: int = 0
    total_tokens: int = 0


class Batch(BaseModel):
    """A provider's batch, normalized. ``raw`` keeps the provider's payload as it came."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: BatchStatus
    endpoint: str | None = None
    completion_window: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    errors: tuple[BatchError, ...] = ()
    metadata: dict[str, str] = Field(default_factory=dict)
    #: The model of the batch's requests, where the provider says it.
    model: str | None = None
    #: The tokens the batch used, where the provider says them (OpenAI: once it has ended).
    usage: BatchUsage | None = None
    created_at: int | None = None
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    #: Where an ended batch's results are read, for providers that give them by URL (Anthropic)
    #: instead of as output and error files.
    results_url: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def resubmit_later(self) -> bool:
        """Failed without running anything, for a reason that passes (see :data:`RESUBMIT_LATER_CODES`)."""
        return self.status == BatchStatus.FAILED and any(e.code in RESUBMIT_LATER_CODES for e in self.errors)


class FileObject(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    bytes: int | None = None
    filename: str | None = None
    purpose: str | None = None
    created_at: int | None = None
    #: When the provider deletes the file (its expiry policy); None: never.
    expires_at: int | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)


class ResultFiles(BaseModel):
    """Where a terminal batch's results were written; either path is None when the batch has no such file."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    output_path: Path | None = None
    error_path: Path | None = None


def rfc3339_epoch(value: Any) -> int | None:
    """Epoch seconds of an RFC 3339 time (``...Z`` or an offset, with or without fractions), as the
    records hold times; None for null. Anthropic's and Gemini's payloads give times so."""
    if value is None:
        return None
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())
