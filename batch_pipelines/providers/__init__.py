"""Providers: one interface over Batch APIs: an OpenAI-compatible HTTP client, Anthropic's Message
Batches, Gemini's Batch Mode, and the local provider (posing as any of them).

``make_provider("moonshot")`` (key from ``MOONSHOT_API_KEY``), ``make_provider("anthropic")`` (key
from ``ANTHROPIC_API_KEY``), ``make_provider("gemini")`` (key from ``GEMINI_API_KEY`` or
``GOOGLE_API_KEY``), ``make_provider("openai", base_url=...)`` or ``make_provider("local",
pose_as="anthropic")`` (no server, no key) is all a caller needs; the profile's ``protocol`` picks
the client. Nothing in
this package imports dagster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from batch_pipelines.local_service.faults import FaultPlan
from batch_pipelines.profiles import ProviderProfile, get_profile, resolve_profile
from batch_pipelines.providers.anthropic import AnthropicProvider
from batch_pipelines.providers.base import CLOCK_SKEW_SECONDS, BatchProvider
from batch_pipelines.providers.gemini import GeminiProvider
from batch_pipelines.providers.types import (
    RESUBMIT_LATER_CODES,
    TERMINAL_STATUSES,
    Batch,
    BatchError,
    BatchStatus,
    BatchUsage,
    FileObject,
    RequestCounts,
    ResultFiles,
)
from batch_pipelines.providers.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    UnprocessableEntityError,
)
from batch_pipelines.providers.http import DEFAULT_TIMEOUT
from batch_pipelines.providers.retry_policy import RetryPolicy
from batch_pipelines.providers.local import (
    DEFAULT_FORWARD_CONCURRENCY,
    LOCAL,
    ForwardingResponder,
    LocalProvider,
    default_local_dir,
)
from batch_pipelines.providers.local_anthropic import local_anthropic_provider
from batch_pipelines.providers.local_gemini import local_gemini_provider
from batch_pipelines.providers.openai_compatible import OpenAICompatibleProvider, parse_batch, parse_file
from batch_pipelines.providers.polling import poll_batches

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AnthropicProvider",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BatchError",
    "BatchProvider",
    "BatchStatus",
    "BatchUsage",
    "CLOCK_SKEW_SECONDS",
    "ConflictError",
    "DEFAULT_FORWARD_CONCURRENCY",
    "DEFAULT_TIMEOUT",
    "FileObject",
    "ForwardingResponder",
    "GeminiProvider",
    "InternalServerError",
    "LOCAL",
    "LocalProvider",
    "NotFoundError",
    "OpenAICompatibleProvider",
    "PermissionDeniedError",
    "ProviderError",
    "RESUBMIT_LATER_CODES",
    "RateLimitError",
    "RequestCounts",
    "ResultFiles",
    "RetryPolicy",
    "TERMINAL_STATUSES",
    "UnprocessableEntityError",
    "default_local_dir",
    "local_anthropic_provider",
    "local_gemini_provider",
    "make_provider",
    "parse_batch",
    "parse_file",
    "poll_batches",
]


def make_provider(
    profile: str | ProviderProfile,
    *,
    api_key: str | SecretStr | None = None,
    base_url: str | None = None,
    data_dir: str | Path | None = None,
    pose_as: str | ProviderProfile = "openai",
    max_retries: int | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    **local_options: Any,
) -> BatchProvider:
    """The provider for ``profile``: ``"local"`` for the embedded one, else an HTTP client.

    ``data_dir``, ``pose_as`` (the profile whose rules the local provider applies) and
    ``local_options`` (``speed``, ``time_scale``, ``seconds_per_request``: the least time each
    request takes, to watch a batch run...) only concern ``"local"``; ``api_key``,
    ``base_url``, ``max_retries``, ``retry`` and ``timeout`` only the HTTP client.
    """
    if profile == LOCAL:
        posed = get_profile(pose_as) if isinstance(pose_as, str) else pose_as
        if seconds := local_options.pop("seconds_per_request", 0):
            local_options["faults"] = FaultPlan(row_delay=seconds)  # the engine's own slow-rows knob
        if posed.protocol == "anthropic":
            return local_anthropic_provider(data_dir, profile=posed, **local_options)
        if posed.protocol == "gemini":
            return local_gemini_provider(data_dir, profile=posed, **local_options)
        return LocalProvider(data_dir=data_dir, profile=posed, **local_options)
    if data_dir is not None or local_options:
        unexpected = ["data_dir"] * (data_dir is not None) + sorted(local_options)
        raise TypeError(f"make_provider({profile!r}): {', '.join(unexpected)} only apply to the local provider")
    resolved = resolve_profile(profile, base_url) if isinstance(profile, str) else profile
    clients: dict[str, type[BatchProvider]] = {"anthropic": AnthropicProvider, "gemini": GeminiProvider}
    client: Any = clients.get(resolved.protocol, OpenAICompatibleProvider)
    return client(resolved, api_key=api_key, base_url=base_url, max_retries=max_retries, retry=retry, timeout=timeout)
