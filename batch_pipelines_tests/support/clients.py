"""Clients of the local service for tests: the official SDK, and what httpx logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

from batch_pipelines.providers import RetryPolicy

__all__ = ["FAST_RETRY", "capture_logs", "requests_sent", "sdk"]

#: Retries as patient as the default policy in count, but milliseconds apart: tests stay fast.
FAST_RETRY = RetryPolicy(max_retries=5, initial_delay=0.01, max_delay=0.05)


def sdk(svc: Any, **options: Any) -> openai.OpenAI:
    """The official SDK pointed at a local service; no retries unless asked (tests see every answer)."""
    options.setdefault("max_retries", 0)
    return openai.OpenAI(api_key=svc.api_key or "unused", base_url=svc.base_url, **options)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def capture_logs(level: int = logging.DEBUG) -> Iterator[list[logging.LogRecord]]:
    """Every record of every logger (httpx, httpcore, ours, the server's) at ``level`` and above."""
    handler = _Collect()
    root = logging.getLogger()
    loggers = [root] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    saved = [(lg, lg.level, lg.disabled, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
        lg.disabled = False
        if lg is not root:
            lg.propagate = True
    root.addHandler(handler)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        for lg, lvl, disabled, propagate in saved:
            lg.setLevel(lvl)
            lg.disabled = disabled
            lg.propagate = propagate


def requests_sent(records: list[logging.LogRecord], method: str, path_part: str) -> int:
    """How many HTTP requests httpx sent (it logs each one at INFO), by method and URL fragment."""
    return sum(
        1
        for r in records
        if r.name == "httpx" and r.getMessage().startswith(f"HTTP Request: {method} ") and path_part in r.getMessage()
    )
