"""When a failed call or a failed row is worth sending again, and how long to wait first.

One rule serves both layers: the HTTP transport retrying an API call, and the results retrying a
row whose line failed (:mod:`batch_pipelines.results.retry`). Both follow openai-python's policy
(``_base_client.py``): timeouts (408), conflicts (409), rate limits (429) and server errors (5xx)
pass; a 429 that says the money ran out does not. The transport's waits back off exponentially
from 0.5 s to 8 s, less up to 25 % jitter, unless the server says how long to wait
(``retry-after-ms``, then ``Retry-After`` in seconds or as an HTTP date); a server asking for more
than ``max_retry_after`` seconds is not waited for, so a caller with hours to spare (a sensor)
comes back later instead of blocking.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass

import httpx

__all__ = ["QUOTA_EXHAUSTED_CODES", "RETRYABLE_STATUSES", "RetryPolicy", "retry_after_seconds", "retryable_status"]

#: Statuses worth another attempt, besides every 5xx.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
#: 429 error codes that mean a spend or credit limit was reached: waiting will not help.
QUOTA_EXHAUSTED_CODES = frozenset(
    {"insufficient_quota", "billing_hard_limit_reached", "exceeded_current_quota_error", "billing_not_active"}
)


def retryable_status(status_code: int, code: str | None = None) -> bool:
    """Whether a failure with HTTP ``status_code`` (and the provider's error ``code`` or type) may pass."""
    if not (status_code in RETRYABLE_STATUSES or status_code >= 500):
        return False
    return not (status_code == 429 and code in QUOTA_EXHAUSTED_CODES)


@dataclass(frozen=True)
class RetryPolicy:
    """How patient the transport is. ``max_retries`` counts retries, not attempts."""

    max_retries: int = 5
    initial_delay: float = 0.5
    max_delay: float = 8.0
    #: Longest server-requested wait honoured; above it the error is raised instead.
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if not 0 <= self.initial_delay <= self.max_delay:
            raise ValueError("need 0 <= initial_delay <= max_delay")

    def delay(self, retries_taken: int, headers: httpx.Headers | None) -> float:
        """Seconds to wait before retry number ``retries_taken + 1``."""
        retry_after = retry_after_seconds(headers)
        if retry_after is not None and 0 < retry_after <= self.max_retry_after:
            return retry_after
        backoff = min(self.initial_delay * 2.0 ** min(retries_taken, 64), self.max_delay)
        return backoff * (1 - 0.25 * random.random())

    def retryable_status(self, status_code: int, code: str | None, headers: httpx.Headers) -> bool:
        """Whether an error answer is worth another attempt; ``code`` is the provider's error code or type."""
        if not retryable_status(status_code, code):
            return False
        retry_after = retry_after_seconds(headers)
        return retry_after is None or retry_after <= self.max_retry_after


def retry_after_seconds(headers: httpx.Headers | None) -> float | None:
    """The server's requested wait: ``retry-after-ms``, else ``Retry-After`` seconds or HTTP date."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        return seconds if math.isfinite(seconds) else math.inf
    date = headers.get("retry-after")
    if date is None:
        return None
    try:
        parsed = email.utils.parsedate_tz(date)
        return None if parsed is None else float(email.utils.mktime_tz(parsed) - time.time())
    except (TypeError, ValueError, OverflowError):
        return None
