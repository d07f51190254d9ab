"""The API key never shows: not in exception texts, log records (DEBUG, every logger) or reprs."""

from __future__ import annotations

import logging
import socket
import traceback

import pytest

from batch_pipelines.local_service import FaultPlan, HttpFault
from batch_pipelines.providers import APIError, OpenAICompatibleProvider, RetryPolicy
from batch_pipelines_tests.support.clients import FAST_RETRY, capture_logs
from batch_pipelines_tests.support.request_files import CHAT, write_requests
from batch_pipelines_tests.support.waiting import wait_terminal

KEY = "sk-CANARY-7f3a9c1e5b2d8f4a6c0e9b7d"
WRONG_KEY = "sk-CANARY-WRONG-0d9e8f7a6b5c4d3e2f1a"


def _exception_texts(exc: BaseException) -> list[str]:
    texts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args), repr(vars(current))]
        current = current.__cause__ or current.__context__
    texts.append("".join(traceback.format_exception(exc)))
    return texts


def _record_texts(record: logging.LogRecord) -> list[str]:
    texts = [record.getMessage(), repr(record.args), repr(record.msg)]
    if record.exc_info:
        texts.append(logging.Formatter().formatException(record.exc_info))
    return texts


def test_the_key_appears_nowhere(local_service, tmp_path):
    svc = local_service(profile="moonshot", api_key=KEY)
    provider = OpenAICompatibleProvider("moonshot", api_key=KEY, base_url=svc.base_url, retry=FAST_RETRY)
    errors: list[BaseException] = []

    def expect_failure(call) -> None:
        with pytest.raises(Exception) as raised:
            call()
        errors.append(raised.value)

    with capture_logs(logging.DEBUG) as records:
        # success: every interface call
        batch = provider.submit(write_requests(tmp_path / "r.jsonl", 4, model="kimi-k2.5"), endpoint=CHAT)
        done = wait_terminal(provider, batch.id)
        provider.download_results(done, tmp_path / "out")
        provider.find_batches({"x": "y"})
        provider.delete_batch_files(done)
        # 400
        expect_failure(lambda: provider.create_batch("file-000000000000000000000000", endpoint=CHAT))
        # 401 (the wrong key must not show either)
        wrong = OpenAICompatibleProvider("moonshot", api_key=WRONG_KEY, base_url=svc.base_url, retry=FAST_RETRY)
        expect_failure(lambda: wrong.retrieve_batch(batch.id))
        # 429 waited out, then 429 beyond the retries
        svc.set_faults(FaultPlan(http_faults=(HttpFault(status=429, times=2, retry_after=0.01),)))
        provider.retrieve_batch(batch.id)
        svc.set_faults(FaultPlan(http_faults=(HttpFault(status=429, times=None, retry_after=0.01),)))
        expect_failure(lambda: provider.retrieve_batch(batch.id))
        # 500 storm
        svc.set_faults(FaultPlan(http_faults=(HttpFault(status=500, times=None),)))
        expect_failure(lambda: list(provider.list_batches()))
        # timeout
        svc.set_faults(FaultPlan(http_faults=(HttpFault(status=None, delay=0.5, times=None),)))
        slow = OpenAICompatibleProvider(
            "moonshot", api_key=KEY, base_url=svc.base_url, timeout=0.1, retry=RetryPolicy(max_retries=1, initial_delay=0.01)
        )
        expect_failure(lambda: slow.retrieve_batch(batch.id))
        svc.set_faults(FaultPlan())
        # connection refused
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        refused = OpenAICompatibleProvider("moonshot", api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", retry=FAST_RETRY)
        expect_failure(lambda: refused.retrieve_batch(batch.id))

    assert [type(e).__name__ for e in errors] == [
        "BadRequestError",
        "AuthenticationError",
        "RateLimitError",
        "InternalServerError",
        "APITimeoutError",
        "APIConnectionError",
    ]
    assert all(isinstance(e, APIError) for e in errors)
    # The capture saw the chattiest loggers, so "nothing in the logs" means something.
    names = {r.name.split(".")[0] for r in records}
    assert {"httpx", "httpcore", "batch_pipelines"} <= names

    texts = [t for e in errors for t in _exception_texts(e)]
    texts += [t for r in records for t in _record_texts(r)]
    for obj in (provider, wrong, slow, refused, provider._http, done):
        texts += [repr(obj), str(obj), repr(vars(obj))]
    for text in texts:
        assert KEY not in text and WRONG_KEY not in text, text
