"""Waiting on a condition, never on the clock.

A loaded 2-core machine makes any wall-clock deadline a coin toss for a correct test, so these
loops wait for what they wait for; the test's pytest timeout is the one bound, and it fails the
test with the stack of the wait that never ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from batch_pipelines.providers import Batch, BatchProvider

__all__ = ["TERMINAL", "wait_for_batch", "wait_terminal", "wait_until"]

T = TypeVar("T")

TERMINAL = ("completed", "failed", "expired", "cancelled")


def wait_until(condition: Callable[[], T], *, interval: float = 0.02) -> T:
    """Call ``condition`` until it returns something truthy; that value."""
    while True:
        value = condition()
        if value:
            return value
        time.sleep(interval)


def wait_for_batch(engine: Any, batch_id: str, statuses: Iterable[str] = TERMINAL) -> dict[str, Any]:
    """The batch's JSON once ``engine`` (a BatchEngine) reports one of ``statuses`` (terminal ones by default)."""
    wanted = set(statuses)

    def reached() -> dict[str, Any] | None:
        batch = engine.get_batch(batch_id)
        return batch if batch["status"] in wanted else None

    return wait_until(reached)


def wait_terminal(provider: BatchProvider, batch_id: str) -> Batch:
    """The batch once ``provider`` reports it terminal."""

    def terminal() -> Batch | None:
        batch = provider.retrieve_batch(batch_id)
        return batch if batch.is_terminal else None

    return wait_until(terminal, interval=0.05)
