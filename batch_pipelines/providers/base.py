"""The provider interface and the typed records it speaks in.

One interface fits OpenAI-style services (a file step, then a batch) and, later, Anthropic Message
Batches (no file step, results at a URL, no metadata). Callers above this layer use the high-level
methods (``submit``, ``find_batches``, ``download_results``, ``delete_batch_files``); a provider
implements the low-level ones. httpx and pydantic only: nothing here imports dagster.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from batch_pipelines.profiles import ProviderProfile

__all__ = [
    "Batch",
    "BatchError",
    "BatchProvider",
    "BatchStatus",
    "CLOCK_SKEW_SECONDS",
    "FileObject",
    "RESUBMIT_LATER_CODES",
    "RequestCounts",
    "ResultFiles",
    "TERMINAL_STATUSES",
    "created_since",
]

#: How far a provider's clock may run behind ours: listings looking for what we created since a
#: moment reach back this much further.
CLOCK_SKEW_SECONDS = 3600
_T = TypeVar("_T")


def created_since(items: Iterable[_T], since: float | None, created_at: Callable[[_T], Any]) -> Iterator[_T]:
    """``items`` of a newest-first listing up to the first one created before ``since`` (None: all).

    Providers list batches and files newest first: what was created since a moment is at the
    head of the listing, however long the account's history behind it.
    """
    for item in items:
        when = created_at(item)
        if since is not None and isinstance(when, int | float) and when < since:
            return
        yield item


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
    created_at: int | None = None
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
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
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)


class ResultFiles(BaseModel):
    """Where a terminal batch's results were written; either path is None when the batch has no such file."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    output_path: Path | None = None
    error_path: Path | None = None


class BatchProvider(abc.ABC):
    """A Batch API. Subclasses implement the low-level calls; the high-level ones are shared."""

    profile: ProviderProfile

    # ---- low-level calls, one per provider operation -------------------------------------
    @abc.abstractmethod
    def upload_file(self, path: Path, *, purpose: str = "batch") -> FileObject: ...

    @abc.abstractmethod
    def create_batch(
        self,
        input_file_id: str,
        *,
        endpoint: str,
        completion_window: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Batch: ...

    @abc.abstractmethod
    def retrieve_batch(self, batch_id: str) -> Batch: ...

    @abc.abstractmethod
    def list_batches(self, *, metadata: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[Batch]:
        """Every batch, following every page; only those whose metadata holds ``metadata``."""

    @abc.abstractmethod
    def cancel_batch(self, batch_id: str) -> Batch: ...

    @abc.abstractmethod
    def download_file(self, file_id: str, dest: Path) -> Path:
        """Stream a file's content to ``dest`` without holding it whole in memory."""

    @abc.abstractmethod
    def delete_file(self, file_id: str) -> None:
        """Delete a file; one already gone is not an error (a retried or repeated delete is harmless)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the provider is unusable afterwards."""

    def __enter__(self) -> BatchProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- high-level operations, what the layers above call -------------------------------
    def submit(
        self,
        path: Path,
        *,
        endpoint: str,
        completion_window: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Batch:
        """Upload a request file and create its batch (Anthropic overrides this: no file step)."""
        uploaded = self.upload_file(path, purpose="batch")
        return self.create_batch(
            uploaded.id,
            endpoint=endpoint,
            completion_window=completion_window or self.profile.default_window,
            metadata=metadata,
        )

    def find_batches(self, metadata: Mapping[str, str], *, created_after: float | None = None) -> list[Batch]:
        """Batches tagged with every pair of ``metadata``, newest first.

        With ``created_after`` (epoch seconds) the listing stops at the first batch created
        before it: providers list newest first, and an account's history can run to thousands
        of batches that need not be read on every submit.
        """
        found = [
            batch
            for batch in created_since(self.list_batches(), created_after, lambda b: b.created_at)
            if all(batch.metadata.get(k) == v for k, v in metadata.items())
        ]
        # A stable sort: batches created in the same second keep the provider's (newest first) order.
        return sorted(found, key=lambda b: b.created_at or 0, reverse=True)

    def download_results(self, batch: Batch, dest_dir: Path) -> ResultFiles:
        """Write a terminal batch's output and error files under ``dest_dir`` (either may be absent)."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        output = self.download_file(batch.output_file_id, dest_dir / f"{batch.id}.output.jsonl") if batch.output_file_id else None
        errors = self.download_file(batch.error_file_id, dest_dir / f"{batch.id}.errors.jsonl") if batch.error_file_id else None
        return ResultFiles(batch_id=batch.id, output_path=output, error_path=errors)

    def delete_batch_files(self, batch: Batch) -> list[str]:
        """Delete a terminal batch's input, output and error files (the file-quota guard)."""
        deleted = []
        for file_id in (batch.input_file_id, batch.output_file_id, batch.error_file_id):
            if file_id:
                self.delete_file(file_id)
                deleted.append(file_id)
        return deleted

    @property
    def delete_files_after_download(self) -> bool:
        """Whether callers should delete a batch's files once its results are on disk (the profile's default)."""
        return self.profile.delete_files_after_download

    def console_url(self, batch_id: str) -> str | None:
        return self.profile.batch_url(batch_id)
