"""One client for every OpenAI-style Batch API (OpenAI, Moonshot, fastapi.ai, Groq, any gateway).

The services share one contract (``/files``, ``/batches``, cursor pages); a
:class:`~batch_pipelines.profiles.ProviderProfile` tells the client where they differ: base URL, key
variable, endpoints, windows, file size, metadata support. The payload parsers at the bottom are the
one place where an OpenAI-shaped batch or file becomes a normalized record; the local provider
uses them too.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr, ValidationError

from batch_pipelines.profiles import (
    ProviderProfile,
    endpoint_problem,
    expires_after,
    expires_after_problem,
    get_profile,
    metadata_problem,
    window_problem,
)
from batch_pipelines.providers.base import CLOCK_SKEW_SECONDS, BatchProvider, created_since
from batch_pipelines.providers.types import Batch, BatchError, BatchStatus, BatchUsage, FileObject
from batch_pipelines.providers.errors import APIResponseValidationError, NotFoundError
from batch_pipelines.providers.http import DEFAULT_TIMEOUT, profile_transport
from batch_pipelines.providers.retry_policy import RetryPolicy

__all__ = [
    "OpenAICompatibleProvider",
    "batch_create_body",
    "iter_batches",
    "parse_batch",
    "parse_file",
    "upload_expiry",
]

_log = logging.getLogger(__name__)


class OpenAICompatibleProvider(BatchProvider):
    """A Batch API spoken over HTTP the OpenAI way.

    Args:
        profile: a profile name (``"moonshot"``, ``"openai"``...) or a :class:`ProviderProfile`.
        api_key: the key; defaults to the profile's environment variable. Never logged or shown.
        base_url: overrides the profile's base URL (a gateway, a proxy, the local service).
        max_retries: overrides ``retry.max_retries``.
        retry: the retry policy (backoff bounds, longest honoured Retry-After).
        timeout: seconds, or an ``httpx.Timeout``.
    """

    def __init__(
        self,
        profile: str | ProviderProfile = "openai",
        *,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self._http = profile_transport(
            self.profile, api_key=api_key, base_url=base_url, max_retries=max_retries, retry=retry, timeout=timeout
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(profile={self.profile.name!r}, base_url={self._http.base_url!r})"

    def close(self) -> None:
        self._http.close()

    # ---- files -----------------------------------------------------------------------------
    def upload_file(self, path: Path, *, purpose: str = "batch", expires_after_seconds: int | None = None) -> FileObject:
        path = Path(path)
        size = path.stat().st_size
        if purpose == "batch" and not 0 < size <= self.profile.max_file_bytes:
            raise ValueError(
                f"{path} is {size} bytes; {self.profile.name} takes 1..{self.profile.max_file_bytes} bytes per file"
            )
        form = {"purpose": purpose}
        policy = upload_expiry(self.profile, expires_after_seconds)
        if policy is not None:  # form fields, as the openai SDK writes a nested parameter
            form |= {"expires_after[anchor]": policy["anchor"], "expires_after[seconds]": str(policy["seconds"])}
        # Uploaded under a name of its own, so that a retry whose first attempt took effect (its
        # answer lost) finds that file instead of leaving it orphaned: files count against the
        # account's quota (Moonshot: 1000) until deleted, and nothing else would delete this one.
        name = f"{path.stem}.{secrets.token_hex(6)}{path.suffix}"
        started = time.time()

        def find_uploaded() -> dict[str, Any] | None:
            recent = created_since(self._iter_files(purpose), started - CLOCK_SKEW_SECONDS, lambda f: f.get("created_at"))
            return next((f for f in recent if f.get("filename") == name and f.get("bytes") == size), None)

        # httpx streams a file handle in 64 KiB chunks (and rewinds it on a retry): never read whole.
        with path.open("rb") as fh:
            payload = self._http.request(
                "POST", "files", data=form, files={"file": (name, fh)}, recover=find_uploaded
            )
        return parse_file(payload)

    def _iter_files(self, purpose: str, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """The account's files of ``purpose``, newest first."""

        def fetch(after: str | None) -> dict[str, Any]:
            params: dict[str, Any] = {"purpose": purpose, "limit": page_size} | ({"after": after} if after else {})
            return self._http.request("GET", "files", params=params)

        return iter_listing(fetch)

    def download_file(self, file_id: str, dest: Path) -> Path:
        return self._http.download(f"files/{file_id}/content", Path(dest))

    def delete_file(self, file_id: str) -> None:
        try:
            self._http.request("DELETE", f"files/{file_id}")
        except NotFoundError:
            _log.debug("file %s was already deleted", file_id)

    # ---- batches ---------------------------------------------------------------------------
    def create_batch(
        self,
        input_file_id: str,
        *,
        endpoint: str,
        completion_window: str | None = None,
        metadata: Mapping[str, str] | None = None,
        output_expires_after_seconds: int | None = None,
    ) -> Batch:
        body = batch_create_body(
            self.profile, input_file_id, endpoint, completion_window, metadata, output_expires_after_seconds
        )
        started = time.time()

        def find_created() -> dict[str, Any] | None:
            # A retried create must not start a second, billed batch: if the lost answer's batch
            # exists (the only one reading this freshly uploaded file), it is the answer.
            recent = created_since(self.list_batches(), started - CLOCK_SKEW_SECONDS, lambda b: b.created_at)
            return next((b.raw for b in recent if b.input_file_id == input_file_id), None)

        return parse_batch(self._http.request("POST", "batches", json=body, recover=find_created))

    def retrieve_batch(self, batch_id: str) -> Batch:
        return parse_batch(self._http.request("GET", f"batches/{batch_id}"))

    def cancel_batch(self, batch_id: str) -> Batch:
        return parse_batch(self._http.request("POST", f"batches/{batch_id}/cancel"))

    def list_batches(self, *, metadata: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[Batch]:
        def fetch(after: str | None) -> dict[str, Any]:
            params: dict[str, Any] = {"limit": page_size} | ({"after": after} if after else {})
            return self._http.request("GET", "batches", params=params)

        return iter_batches(fetch, metadata)


def iter_batches(
    fetch_page: Callable[[str | None], Mapping[str, Any]], metadata: Mapping[str, str] | None
) -> Iterator[Batch]:
    """Every batch of an OpenAI-style cursor listing (``fetch_page(after)``), filtered on ``metadata``."""
    for item in iter_listing(fetch_page):
        batch = parse_batch(item)
        if not metadata or all(batch.metadata.get(k) == v for k, v in metadata.items()):
            yield batch


def iter_listing(fetch_page: Callable[[str | None], Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every item of an OpenAI-style cursor listing: ``fetch_page(after)`` pages of ``data``, ``has_more``."""
    after: str | None = None
    while True:
        page = fetch_page(after)
        items = page.get("data") or []
        yield from items
        if not page.get("has_more") or not items:
            return
        cursor = page.get("last_id") or items[-1].get("id")
        if not cursor or cursor == after:
            raise APIResponseValidationError(f"the list says has_more but its cursor does not advance ({cursor!r})")
        after = cursor


def batch_create_body(
    profile: ProviderProfile,
    input_file_id: str,
    endpoint: str,
    completion_window: str | None,
    metadata: Mapping[str, str] | None,
    output_expires_after_seconds: int | None = None,
) -> dict[str, Any]:
    """The create-batch body, refusing before any money moves what the provider is documented to reject.

    A profile without batch metadata gets none (the caller is warned): its batches are found again
    from the caller's own records, not with list.
    """
    window = completion_window or profile.default_window
    expiry = expires_after(output_expires_after_seconds) if output_expires_after_seconds is not None else None
    problem = (
        endpoint_problem(profile, endpoint)
        or window_problem(profile, window)
        or metadata_problem(metadata)
        or expires_after_problem(profile, expiry, "output_expires_after")
    )
    if problem:
        raise ValueError(problem)
    body: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": window}
    if expiry is not None:
        body["output_expires_after"] = expiry
    if not metadata:
        return body
    if profile.supports_metadata:
        body["metadata"] = dict(metadata)
    else:
        _log.warning(
            "%s does not keep batch metadata; the batch for file %s is created without its %d tags",
            profile.name, input_file_id, len(metadata),
        )
    return body


def upload_expiry(profile: ProviderProfile, expires_after_seconds: int | None) -> dict[str, Any] | None:
    """An upload's ``expires_after`` policy (None for none); ValueError for one the profile refuses."""
    if expires_after_seconds is None:
        return None
    policy = expires_after(expires_after_seconds)
    problem = expires_after_problem(profile, policy, "expires_after")
    if problem:
        raise ValueError(problem)
    return policy


# ---- payload -> record: the one normalizer -----------------------------------------------------
_STATUS_ALIASES = {"canceled": "cancelled", "canceling": "cancelling"}


def parse_batch(payload: Mapping[str, Any]) -> Batch:
    """Normalize an OpenAI-shaped batch object; APIResponseValidationError if it is not one."""
    raw = dict(payload)
    status = str(raw.get("status", "")).lower()
    status = _STATUS_ALIASES.get(status, status)
    if status not in BatchStatus._value2member_map_:
        raise APIResponseValidationError(f"batch {raw.get('id')!r} has unknown status {raw.get('status')!r}")
    errors = raw.get("errors") or []
    if isinstance(errors, Mapping):
        errors = errors.get("data") or []
    metadata = raw.get("metadata") or {}
    try:
        return Batch.model_validate(
            {
                **{k: v for k, v in raw.items() if k in Batch.model_fields and v is not None},
                "status": status,
                "errors": [BatchError.model_validate(e) for e in errors],
                "metadata": {str(k): str(v) for k, v in metadata.items()},
                "request_counts": raw.get("request_counts") or {},
                "usage": _usage(raw.get("usage")),
                "raw": raw,
            }
        )
    except ValidationError as exc:
        raise APIResponseValidationError(f"batch {raw.get('id')!r} does not parse: {_first_problem(exc)}") from None


def _usage(usage: Any) -> BatchUsage | None:
    """A batch's ``usage`` (``input_tokens``, ``input_tokens_details.cached_tokens``, ...) as a flat record."""
    if not isinstance(usage, Mapping):
        return None
    inputs = usage.get("input_tokens_details") or {}
    outputs = usage.get("output_tokens_details") or {}
    return BatchUsage.model_validate(
        {
            "input_tokens": usage.get("input_tokens") or 0,
            "cached_tokens": inputs.get("cached_tokens") or 0 if isinstance(inputs, Mapping) else 0,
            "output_tokens": usage.get("output_tokens") or 0,
            "reasoning_tokens": outputs.get("reasoning_tokens") or 0 if isinstance(outputs, Mapping) else 0,
            "total_tokens": usage.get("total_tokens") or 0,
        }
    )


def parse_file(payload: Mapping[str, Any]) -> FileObject:
    """Normalize an OpenAI-shaped file object."""
    raw = dict(payload)
    try:
        return FileObject.model_validate(
            {**{k: v for k, v in raw.items() if k in FileObject.model_fields and v is not None}, "raw": raw}
        )
    except ValidationError as exc:
        raise APIResponseValidationError(f"file {raw.get('id')!r} does not parse: {_first_problem(exc)}") from None


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
