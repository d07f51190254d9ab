"""Polling many batches at once within a time budget.

A sensor tick and a blocking run both ask "where is each of these batches now?" for up to
hundreds of batches; a retrieve is a light GET, so they go concurrently, and whatever is not
answered by the deadline is left for the caller's next round instead of holding it up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait

from batch_pipelines.providers.base import BatchProvider
from batch_pipelines.providers.types import Batch

__all__ = ["poll_batches"]


def poll_batches(
    provider: BatchProvider, batch_ids: Sequence[str], *, max_workers: int, deadline: float
) -> dict[str, Batch | Exception]:
    """Retrieve batches concurrently until ``deadline`` (``time.monotonic()``).

    Returns what came back in time: the batch, or the exception its retrieve raised. Ids missing
    from the answer were not polled in time (still queued when the deadline passed).
    """
    if not batch_ids:
        return {}

    def retrieve(batch_id: str) -> Batch | Exception | None:
        if time.monotonic() >= deadline:
            return None
        try:
            return provider.retrieve_batch(batch_id)
        except Exception as exc:  # noqa: BLE001 - one batch's failure is reported, not raised
            return exc

    pool = ThreadPoolExecutor(max_workers=min(max_workers, len(batch_ids)), thread_name_prefix="batch-poll")
    try:
        futures = {pool.submit(retrieve, batch_id): batch_id for batch_id in batch_ids}
        done, _ = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    finally:
        # Queued polls are dropped; running ones finish in the background and are ignored. Also
        # when the wait is interrupted (a run terminated): idle workers must not outlive it.
        pool.shutdown(wait=False, cancel_futures=True)
    answers = {futures[f]: f.result() for f in done if not f.cancelled()}
    return {batch_id: answer for batch_id, answer in answers.items() if answer is not None}
