"""Anthropic's Message Batches API behind the provider interface.

The shape differs from OpenAI's in three ways, and the interface hides all three:

- No file step: :meth:`AnthropicProvider.submit` reads the shard (the same ``{custom_id, method,
  url, body}`` lines every provider's shards have) and sends its requests inline as
  ``{"requests": [{custom_id, params: body}]}``.
- Results at a URL, one JSONL file for every outcome: :meth:`download_results` fetches
  ``results_url`` into the output path; the Anthropic line parser reads it
  (``results/line_formats.py``).
- No metadata: batches are never found by their tags (``find_batches`` finds none); the
  submission layer records its intent before a create and finds an orphan by time and size
  instead. A create whose answer was lost is not sent again while a batch of its size created
  since may be it.

Statuses become the normalized ones: ``in_progress``; ``canceling`` is cancelling; ``ended`` is
cancelled when a cancel was initiated, expired when requests expired, else completed. Counts:
``completed`` = succeeded, ``failed`` = errored + canceled + expired. The calls go through
:class:`MessageBatchesApi`: over HTTP here, or into the local engine (``local_anthropic.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
from pydantic import SecretStr, ValidationError

from batch_pipelines.profiles import (
    MESSAGES,
    ProviderProfile,
    endpoint_problem,
    expires_after,
    expires_after_problem,
    get_profile,
    window_problem,
)
from batch_pipelines.providers.base import CLOCK_SKEW_SECONDS, BatchProvider, created_since
from batch_pipelines.providers.errors import APIResponseValidationError, ProviderError
from batch_pipelines.providers.http import DEFAULT_TIMEOUT, HttpTransport, profile_transport
from batch_pipelines.providers.retry_policy import RetryPolicy
from batch_pipelines.providers.types import Batch, BatchStatus, FileObject, RequestCounts, ResultFiles, rfc3339_epoch

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider", "MessageBatchesApi", "inline_requests", "parse_message_batch"]

_log = logging.getLogger(__name__)

#: The API version every call names (``anthropic-version``).
ANTHROPIC_VERSION = "2023-06-01"


class MessageBatchesApi(Protocol):
    """The Message Batches calls, answering Anthropic's JSON objects."""

    def create(self, body: bytes, *, recover: Any = None) -> dict[str, Any]: ...

    def retrieve(self, batch_id: str) -> dict[str, Any]: ...

    def list_page(self, *, limit: int, after_id: str | None) -> dict[str, Any]: ...

    def cancel(self, batch_id: str) -> dict[str, Any]: ...

    def delete(self, batch_id: str) -> dict[str, Any]: ...

    def download_results(self, batch: Batch, dest: Path) -> Path: ...

    def close(self) -> None: ...


class _HttpMessageBatches:
    """The calls over HTTP: the shared transport (retries, typed errors, the guarded key)."""

    def __init__(self, transport: HttpTransport) -> None:
        self._http = transport

    def create(self, body: bytes, *, recover: Any = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        return self._http.request("POST", "messages/batches", content=body, headers=headers, recover=recover)

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._http.request("GET", f"messages/batches/{batch_id}")

    def list_page(self, *, limit: int, after_id: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit} | ({"after_id": after_id} if after_id else {})
        return self._http.request("GET", "messages/batches", params=params)

    def cancel(self, batch_id: str) -> dict[str, Any]:
        return self._http.request("POST", f"messages/batches/{batch_id}/cancel")

    def delete(self, batch_id: str) -> dict[str, Any]:
        return self._http.request("DELETE", f"messages/batches/{batch_id}")

    def download_results(self, batch: Batch, dest: Path) -> Path:
        # The URL as given, as the official SDK fetches it (absolute, on the API's host).
        return self._http.download(batch.results_url or f"messages/batches/{batch.id}/results", dest)

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"_HttpMessageBatches(base_url={self._http.base_url!r})"


class AnthropicProvider(BatchProvider):
    """Anthropic Message Batches.

    Args:
        profile: ``"anthropic"`` or a :class:`ProviderProfile` of the ``anthropic`` protocol.
        api_key: the key; defaults to ``ANTHROPIC_API_KEY``. Never logged or shown.
        base_url: overrides the profile's (``https://api.anthropic.com/v1``), e.g. the local service.
        max_retries, retry, timeout: as for the OpenAI-compatible client.
        api: the calls themselves, when not over HTTP (the local provider posing as Anthropic).
    """

    def __init__(
        self,
        profile: str | ProviderProfile = "anthropic",
        *,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        api: MessageBatchesApi | None = None,
    ) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        if api is None:
            transport = profile_transport(
                self.profile, api_key=api_key, base_url=base_url, max_retries=max_retries, retry=retry, timeout=timeout,
                key_header="x-api-key", headers={"anthropic-version": ANTHROPIC_VERSION},
            )  # fmt: skip
            api = _HttpMessageBatches(transport)
        self._api = api

    def __repr__(self) -> str:
        return f"{type(self).__name__}(profile={self.profile.name!r}, api={self._api!r})"

    def close(self) -> None:
        self._api.close()

    # ---- the high-level calls this shape needs -----------------------------------------------
    def submit(
        self,
        path: Path,
        *,
        endpoint: str,
        completion_window: str | None = None,
        metadata: Mapping[str, str] | None = None,
        output_expires_after_seconds: int | None = None,
    ) -> Batch:
        """Send a shard's requests inline; its ``metadata`` is not kept (Anthropic has none), and
        its results have no expiry policy (Anthropic keeps them 29 days)."""
        expiry = expires_after(output_expires_after_seconds) if output_expires_after_seconds is not None else None
        problem = (
            endpoint_problem(self.profile, endpoint)
            or window_problem(self.profile, completion_window or self.profile.default_window)
            or expires_after_problem(self.profile, expiry, "output_expires_after")
        )
        if problem:
            raise ValueError(problem)
        body, count = inline_requests(Path(path), self.profile)
        started = time.time()

        def find_created() -> dict[str, Any] | None:
            # The create may have taken effect although its answer was lost. Without metadata a
            # batch of this size created since may be it: never send it again while one is there.
            since = started - CLOCK_SKEW_SECONDS
            maybe = [b.id for b in created_since(self.list_batches(), since, lambda b: b.created_at) if b.request_counts.total == count]
            if maybe:
                raise ProviderError(
                    f"the create of {Path(path).name} ({count} requests) lost its answer and batch(es) {', '.join(maybe)} "
                    "of that size were created since: not sending it again (the submission finds its batch among them)"
                )
            return None

        return parse_message_batch(self._api.create(body, recover=find_created))

    def download_results(self, batch: Batch, dest_dir: Path) -> ResultFiles:
        """An ended batch's one results file (every outcome in it) as the output path."""
        path = dest_dir / f"{batch.id}.output.jsonl"
        if batch.is_terminal and not path.exists():
            self._api.download_results(batch, path)
        return ResultFiles(batch_id=batch.id, output_path=path if path.exists() else None, error_path=None)

    def delete_batch(self, batch_id: str) -> None:
        """Delete an ended batch (its results with it)."""
        self._api.delete(batch_id)

    # ---- the low-level calls -----------------------------------------------------------------
    def retrieve_batch(self, batch_id: str) -> Batch:
        return parse_message_batch(self._api.retrieve(batch_id))

    def cancel_batch(self, batch_id: str) -> Batch:
        return parse_message_batch(self._api.cancel(batch_id))

    def list_batches(self, *, metadata: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[Batch]:
        """Every batch, newest first; none when ``metadata`` is asked for (batches have none)."""
        if metadata:
            return
        after: str | None = None
        while True:
            page = self._api.list_page(limit=page_size, after_id=after)
            items = page.get("data") or []
            for item in items:
                yield parse_message_batch(item)
            if not page.get("has_more") or not items:
                return
            cursor = page.get("last_id") or items[-1].get("id")
            if not cursor or cursor == after:
                raise APIResponseValidationError(f"the list says has_more but its cursor does not advance ({cursor!r})")
            after = cursor

    # Message Batches have no file step: the file calls of the interface do not apply.
    def upload_file(self, path: Path, *, purpose: str = "batch", expires_after_seconds: int | None = None) -> FileObject:
        raise ProviderError(f"{self.profile.name} Message Batches take their requests inline: use submit()")

    def create_batch(
        self,
        input_file_id: str,
        *,
        endpoint: str,
        completion_window: str | None = None,
        metadata: Mapping[str, str] | None = None,
        output_expires_after_seconds: int | None = None,
    ) -> Batch:
        raise ProviderError(f"{self.profile.name} Message Batches take their requests inline: use submit()")

    def download_file(self, file_id: str, dest: Path) -> Path:
        raise ProviderError(f"{self.profile.name} Message Batches have no files: use download_results()")

    def delete_file(self, file_id: str) -> None:
        raise ProviderError(f"{self.profile.name} Message Batches have no files")


def inline_requests(path: Path, profile: ProviderProfile) -> tuple[bytes, int]:
    """A shard's lines as a create body ``{"requests": [{custom_id, params}]}``, and their count.

    Refused (ValueError) over the profile's request count or bytes, before anything is sent. The
    body is built once in memory: the profile bounds it (256 MB), and the shards were cut to fit.
    """
    items = []
    size = 0
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
                item = orjson.dumps({"custom_id": line["custom_id"], "params": line["body"]})
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path.name} line {n} is not a request line ({exc})") from None
            size += len(item) + 1
            items.append(item)
    most = profile.max_requests_per_file
    if not items:
        raise ValueError(f"{path.name} holds no requests")
    if most is not None and len(items) > most:
        raise ValueError(f"{path.name} holds {len(items)} requests; {profile.name} takes at most {most} a batch")
    if size > profile.max_file_bytes:
        raise ValueError(f"{path.name} makes a {size}-byte batch; {profile.name} takes at most {profile.max_file_bytes} bytes")
    return b'{"requests":[' + b",".join(items) + b"]}", len(items)


# ---- payload -> record ---------------------------------------------------------------------------
_STATUSES = {"in_progress": BatchStatus.IN_PROGRESS, "canceling": BatchStatus.CANCELLING}


def parse_message_batch(payload: Mapping[str, Any]) -> Batch:
    """Normalize a ``message_batch`` object; APIResponseValidationError if it is not one."""
    raw = dict(payload)
    try:
        counts = raw["request_counts"]
        succeeded, errored, canceled, expired = (int(counts.get(k) or 0) for k in ("succeeded", "errored", "canceled", "expired"))
        processing = int(counts.get("processing") or 0)
        kind = raw["processing_status"]
        ended_at = rfc3339_epoch(raw.get("ended_at"))
        cancel_at = rfc3339_epoch(raw.get("cancel_initiated_at"))
        if kind == "ended":
            status = BatchStatus.CANCELLED if cancel_at else BatchStatus.EXPIRED if expired else BatchStatus.COMPLETED
        elif kind in _STATUSES:
            status = _STATUSES[kind]
        else:
            raise ValueError(f"unknown processing_status {kind!r}")
        ends = {BatchStatus.COMPLETED: "completed_at", BatchStatus.EXPIRED: "expired_at", BatchStatus.CANCELLED: "cancelled_at"}
        return Batch(
            id=raw["id"],
            status=status,
            endpoint=MESSAGES,
            completion_window="24h",
            request_counts=RequestCounts(
                total=processing + succeeded + errored + canceled + expired, completed=succeeded, failed=errored + canceled + expired
            ),
            created_at=rfc3339_epoch(raw.get("created_at")),
            in_progress_at=rfc3339_epoch(raw.get("created_at")),
            expires_at=rfc3339_epoch(raw.get("expires_at")),
            cancelling_at=cancel_at,
            results_url=raw.get("results_url"),
            raw=raw,
            **({ends[status]: ended_at} if status in ends else {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError, ValidationError) as exc:
        raise APIResponseValidationError(f"message batch {raw.get('id')!r} does not parse: {exc}") from None

