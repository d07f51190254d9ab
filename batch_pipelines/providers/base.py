"""The provider interface: what every Batch API client implements, and what callers use.

One interface fits OpenAI-style services (a file step, then a batch) and, later, Anthropic Message
Batches (no file step, results at a URL, no metadata). Callers above this layer use the high-level
methods (``submit``, ``find_batches``, ``download_results``, ``delete_batch_files``); a provider
implements the low-level ones. The records it speaks in are in :mod:`batch_pipelines.providers.types`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from batch_pipelines.profiles import ProviderProfile
from batch_pipelines.providers.types import Batch, FileObject, ResultFiles

__all__ = ["BatchProvider", "CLOCK_SKEW_SECONDS", "created_since"]

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


class BatchProvider(abc.ABC):
    """A Batch API. Subclasses implement the low-level calls; the high-level ones are shared."""

    profile: ProviderProfile

    # ---- low-level calls, one per provider operation -------------------------------------
    @abc.abstractmethod
    def upload_file(self, path: Path, *, purpose: str = "batch", expires_after_seconds: int | None = None) -> FileObject:
        """Upload a file; ``expires_after_seconds``: the provider deletes it that long after (where the
        profile has ``supports_file_expiry``)."""

    @abc.abstractmethod
    def create_batch(
        self,
        input_file_id: str,
        *,
        endpoint: str,
        completion_window: str | None = None,
        metadata: Mapping[str, str] | None = None,
        output_expires_after_seconds: int | None = None,
    ) -> Batch:
        """Create a batch; ``output_expires_after_seconds``: its output and error files are deleted
        that long after they are written (where the profile has ``supports_file_expiry``)."""

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
        output_expires_after_seconds: int | None = None,
    ) -> Batch:
        """Upload a request file and create its batch (Anthropic overrides this: no file step)."""
        uploaded = self.upload_file(path, purpose="batch")
        # Only a policy that is set is passed on: a provider without the parameter is never given it.
        expiry = {"output_expires_after_seconds": output_expires_after_seconds} if output_expires_after_seconds is not None else {}
        return self.create_batch(
            uploaded.id,
            endpoint=endpoint,
            completion_window=completion_window or self.profile.default_window,
            metadata=metadata,
            **expiry,
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
        """A terminal batch's output and error files under ``dest_dir`` (either may be absent).

        A file already there is not downloaded again: a results run that is retried, or that
        joins several attempts, reads what an earlier run fetched.
        """
        paths: dict[str, Path | None] = {}
        for kind, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
            path = dest_dir / f"{batch.id}.{kind}.jsonl"
            if file_id and not path.exists():
                self.download_file(file_id, path)
            paths[kind] = path if file_id else None
        return ResultFiles(batch_id=batch.id, output_path=paths["output"], error_path=paths["errors"])

    def delete_batch_files(self, batch: Batch) -> list[str]:
        """Delete a terminal batch's input, output and error files (the file-quota guard)."""
        deleted = []
        for file_id in (batch.input_file_id, batch.output_file_id, batch.error_file_id):
            if file_id:
                self.delete_file(file_id)
                deleted.append(file_id)
        return deleted

    def console_url(self, batch_id: str) -> str | None:
        return self.profile.batch_url(batch_id)
