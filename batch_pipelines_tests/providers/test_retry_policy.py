"""The retry policy's arithmetic: server-directed waits, backoff bounds, what is never retried."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from batch_pipelines.providers import ProviderError, RetryPolicy
from batch_pipelines.providers.http import resolve_api_key

POLICY = RetryPolicy(max_retries=5, initial_delay=0.5, max_delay=8.0, max_retry_after=120.0)


def test_retry_after_ms_wins_over_retry_after():
    headers = httpx.Headers({"retry-after-ms": "250", "retry-after": "7"})
    assert POLICY.delay(0, headers) == pytest.approx(0.25)


def test_retry_after_seconds_and_http_date():
    assert POLICY.delay(3, httpx.Headers({"retry-after": "2.5"})) == pytest.approx(2.5)
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 27 <= POLICY.delay(0, httpx.Headers({"retry-after": when})) <= 31


@pytest.mark.parametrize("retries_taken, ceiling", [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)])
def test_backoff_is_exponential_jittered_and_capped(retries_taken, ceiling):
    delays = [POLICY.delay(retries_taken, None) for _ in range(200)]
    assert all(0.75 * ceiling <= d <= ceiling for d in delays)
    assert len(set(delays)) > 1  # jittered


def test_unusable_retry_after_falls_back_to_backoff():
    for value in ("0", "-3", "soon"):
        assert 0.375 <= POLICY.delay(0, httpx.Headers({"retry-after": value})) <= 0.5


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses(status):
    assert POLICY.retryable_status(status, None, httpx.Headers())


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(status):
    assert not POLICY.retryable_status(status, None, httpx.Headers())


def test_spend_limit_429_and_overlong_retry_after_are_not_retried():
    assert not POLICY.retryable_status(429, "insufficient_quota", httpx.Headers())
    assert POLICY.retryable_status(429, "rate_limit_exceeded", httpx.Headers())
    assert not POLICY.retryable_status(429, None, httpx.Headers({"retry-after": "3600"}))
    assert not POLICY.retryable_status(503, None, httpx.Headers({"retry-after-ms": "inf"}))


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)


def test_api_key_from_argument_or_environment(monkeypatch):
    monkeypatch.setenv("BP_TEST_KEY", "sk-from-env")
    assert resolve_api_key("sk-arg", "BP_TEST_KEY", "x").get_secret_value() == "sk-arg"
    assert resolve_api_key(None, "BP_TEST_KEY", "x").get_secret_value() == "sk-from-env"
    monkeypatch.delenv("BP_TEST_KEY")
    with pytest.raises(ProviderError, match="set the BP_TEST_KEY environment variable"):
        resolve_api_key(None, "BP_TEST_KEY", "moonshot")
