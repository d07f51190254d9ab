"""Helpers shared by the provider tests: request files, polling with a deadline, log capture."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from batch_pipelines.providers import Batch, BatchProvider, RetryPolicy

CHAT = "/v1/chat/completions"
MODELS = {"moonshot": "kimi-k2.5", "openai": "gpt-4o-mini"}

#: Retries as patient as the default policy in count, but milliseconds apart: tests stay fast.
FAST_RETRY = RetryPolicy(max_retries=5, initial_delay=0.01, max_delay=0.05)


def write_requests(path: Path, n: int, *, model: str = "gpt-4o-mini", prefix: str = "row") -> Path:
    """A chat-completions request file of ``n`` lines, custom ids ``{prefix}-0`` ...."""
    with path.open("wb") as fh:
        for i in range(n):
            line = {
                "custom_id": f"{prefix}-{i}",
                "method": "POST",
                "url": CHAT,
                "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]},
            }
            fh.write(orjson.dumps(line) + b"\n")
    return path


def wait_terminal(provider: BatchProvider, batch_id: str, *, timeout: float = 30.0) -> Batch:
    """Poll ``provider`` until the batch is terminal; fail on the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        batch = provider.retrieve_batch(batch_id)
        if batch.is_terminal:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status} after {timeout}s"
        time.sleep(0.05)


def custom_ids(path: Path) -> list[str]:
    with path.open("rb") as fh:
        return [orjson.loads(line)["custom_id"] for line in fh]


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
