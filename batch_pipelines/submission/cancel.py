"""Cancelling live batches, found at the provider by their tags.

Tags reach batches whose submission Dagster never recorded, so a cancel misses nothing the
pipeline created. Terminal batches are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from batch_pipelines.providers import Batch, BatchProvider, BatchStatus
from batch_pipelines.submission.submitter import Log
from batch_pipelines.submission.tags import PARTITION_TAG, PIPELINE_TAG, RUN_TAG, partition_tag
from batch_pipelines.submission.types import SubmittedBatch

__all__ = ["cancel_partition_batches", "cancel_run_batches", "cancel_superseded", "superseded_batches"]


def cancel_partition_batches(provider: BatchProvider, pipeline: str, partitions: Sequence[str | None]) -> list[Batch]:
    """Cancel every live batch ``pipeline`` submitted for ``partitions``; the batches cancelled."""
    cancelled: list[Batch] = []
    for partition in partitions:
        for batch in provider.find_batches({PIPELINE_TAG: pipeline, PARTITION_TAG: partition_tag(partition)}):
            if not batch.is_terminal and batch.status != BatchStatus.CANCELLING:
                cancelled.append(provider.cancel_batch(batch.id))
    return cancelled


def cancel_run_batches(
    provider: BatchProvider,
    *,
    pipeline: str,
    partition: str | None,
    run_id: str,
    since: float | None,
    known: Iterable[str],
    log: Log,
) -> None:
    """Best effort while a run stops: cancel ``known`` batches and every live one the run created.

    The run's own batches are also found by their run tag: one accepted just before the interrupt
    never returned its id.
    """
    ids = set(known)
    try:
        tags = {PIPELINE_TAG: pipeline, PARTITION_TAG: partition_tag(partition), RUN_TAG: run_id}
        ids.update(b.id for b in provider.find_batches(tags, created_after=since) if not b.is_terminal)
    except Exception as exc:  # noqa: BLE001 - best effort while the run stops
        log.warning(f"run stopped: could not list this run's batches: {exc}")
    for batch_id in sorted(ids):
        try:
            provider.cancel_batch(batch_id)
            log.warning(f"run stopped: cancelled batch {batch_id}")
        except Exception as exc:  # noqa: BLE001 - a terminal batch cannot be cancelled: fine
            log.info(f"run stopped: batch {batch_id} not cancelled: {exc}")


def superseded_batches(batches: Sequence[SubmittedBatch], rebuilt: set[str]) -> list[SubmittedBatch]:
    """The batches of a round that request files just rebuilt supersede.

    ``batches`` are the round's, ``rebuilt`` the fingerprints of the shards just written. When the
    round's first attempt holds exactly those shards, nothing changed: none (a rebuild of the same
    rows re-attaches). Otherwise every batch of the round whose shard is not among the new ones.
    """
    if {b.fingerprint for b in batches if b.attempt == 1} == rebuilt:
        return []
    return [b for b in batches if b.fingerprint not in rebuilt]


def cancel_superseded(provider: BatchProvider, batches: Sequence[SubmittedBatch], log: Log) -> list[str]:
    """Cancel the live ones of ``batches`` (superseded: they run requests nobody will read); the ids cancelled."""
    cancelled = []
    for record in batches:
        batch = provider.retrieve_batch(record.batch_id)
        if batch.is_terminal or batch.status == BatchStatus.CANCELLING:
            continue
        try:
            provider.cancel_batch(batch.id)
        except Exception as exc:  # noqa: BLE001 - it may have finished meanwhile: reported, not fatal
            log.warning(f"could not cancel superseded batch {batch.id}: {exc}")
            continue
        log.warning(f"batch {batch.id} runs request files that were rebuilt with other content: cancelled")
        cancelled.append(batch.id)
    return cancelled
