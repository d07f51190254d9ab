"""Blocking mode: a run that polls its own batches until they are terminal (small jobs, tests).

The sensor is the normal way; a blocking run holds its worker for as long as the batches take.
A run that cancelled superseded batches waits here too, a bounded time, for what they finished.
"""

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import dagster as dg

from batch_pipelines.providers import Batch, BatchProvider, poll_batches
from batch_pipelines.submission import cancel_run_batches

__all__ = ["cancel_if_stopped", "wait_ended", "wait_for_batches"]

#: Seconds one round of polls may take before the run sleeps and polls again.
_POLL_ROUND_SECONDS = 60
#: Seconds to sleep between two rounds, given the seconds since the wait began.
DelayFn = Callable[[float], float]


def wait_for_batches(
    log: dg.DagsterLogManager, provider: BatchProvider, batch_ids: Sequence[str], *, max_workers: int, delay: DelayFn
) -> list[Batch]:
    """Poll until every batch is terminal; ``delay(age_seconds)`` says how long to sleep between rounds."""
    ended = wait_ended(log, provider, batch_ids, max_workers=max_workers, delay=delay, seconds=None)
    return [ended[i] for i in batch_ids]


def wait_ended(
    log: dg.DagsterLogManager,
    provider: BatchProvider,
    batch_ids: Sequence[str],
    *,
    max_workers: int,
    delay: DelayFn,
    seconds: float | None,
) -> dict[str, Batch]:
    """The batches that are terminal once all are, or after ``seconds`` (None: no limit)."""
    latest: dict[str, Batch] = {}
    started = time.monotonic()
    while True:
        open_ids = [i for i in batch_ids if i not in latest or not latest[i].is_terminal]
        polled = poll_batches(provider, open_ids, max_workers=max_workers, deadline=time.monotonic() + _POLL_ROUND_SECONDS)
        for batch_id, answer in polled.items():
            if isinstance(answer, Exception):
                log.warning(f"polling batch {batch_id} failed: {answer}")
            else:
                latest[batch_id] = answer
        waited = time.monotonic() - started
        if all(i in latest and latest[i].is_terminal for i in batch_ids) or (seconds is not None and waited >= seconds):
            return {i: b for i, b in latest.items() if b.is_terminal}
        pause = delay(waited)
        time.sleep(pause if seconds is None else max(0.0, min(pause, seconds - waited)))


@contextmanager
def cancel_if_stopped(
    context: dg.AssetExecutionContext,
    provider: BatchProvider,
    *,
    enabled: bool,
    pipeline: str,
    partition: str | None,
    since: Callable[[], float | None],
) -> Iterator[list[str]]:
    """Cancel this run's batches if the run is terminated while they run (when ``enabled``).

    Yields a list to add the ids of batches the run waits for; batches this run created are also
    found by their run tag, created after ``since()`` (asked only when the run stops). A run that
    fails otherwise leaves its batches alone: running it again re-attaches.
    """
    watched: list[str] = []
    if not enabled:
        yield watched
        return
    try:
        yield watched
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
        cancel_run_batches(
            provider, pipeline=pipeline, partition=partition, run_id=context.run.run_id, since=since(), known=watched, log=context.log
        )
        raise
