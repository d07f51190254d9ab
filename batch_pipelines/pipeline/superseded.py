"""A rebuilt partition's batches that no longer match its requests: cancelled, what they finished kept.

When a partition's request files are built again while its round's batches are in flight (the
source changed: ``cancel_superseded``), the batches whose shards are not among the new ones would
answer content that is no longer the partition's. Those in flight are cancelled. What they
answered before the cancel landed, and what those that had ended answered (no results joined
from them yet), was paid for: it goes into the reuse store (keyed by the id maps they were sent
with, read before the rebuild overwrote them) and those requests are not sent again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd

from batch_pipelines.pipeline.blocking import wait_ended
from batch_pipelines.pipeline.ledger import Round, joined_batches
from batch_pipelines.providers import BatchProvider, ProviderError
from batch_pipelines.requests import FINGERPRINT_COLUMN, RequestManifest
from batch_pipelines.results import superseded_answers
from batch_pipelines.storage import WorkingCopy
from batch_pipelines.submission import PartitionFolder, SubmittedBatch, cancel_superseded, superseded_batches

if TYPE_CHECKING:
    from batch_pipelines.pipeline.runtime import PipelineRuntime

__all__ = ["cancel_superseded_round", "sent_id_maps"]


def sent_id_maps(runtime: PipelineRuntime, copy: WorkingCopy, folder: PartitionFolder, current: Round) -> dict[int, RequestManifest]:
    """Each attempt's manifest of the round, its id map read (kept in memory past a rebuild)."""
    manifests = {}
    for attempt in sorted({b.attempt for b in current.batches}):
        try:
            manifest = runtime.manifest(copy, folder, attempt)
            manifest.read_ids()
        except (OSError, ValueError):
            continue  # files gone (cleaned up): their answers cannot be keyed
        manifests[attempt] = manifest
    return manifests


def cancel_superseded_round(
    runtime: PipelineRuntime,
    context: dg.AssetExecutionContext,
    copy: WorkingCopy,
    folder: PartitionFolder,
    current: Round,
    fingerprints: Sequence[str],
    sent_with: dict[int, RequestManifest],
) -> tuple[list[str], set[str]]:
    """Cancel the round's batches not among the shards ``fingerprints``; the batches cancelled, and
    the fingerprints of the requests they had answered (kept in the reuse store)."""
    superseded = superseded_batches(current.batches, set(fingerprints))
    if not superseded:
        return [], set()
    with runtime.resource(context).get_provider() as provider:
        cancelled = cancel_superseded(provider, superseded, context.log)
        # Cancelled ones, and ones that had ended before any results were joined from them: what
        # they answered was paid for either way.
        joined = joined_batches(context.instance, runtime.results_key, current.partition)
        unread = [b for b in superseded if b.batch_id not in joined]
        kept = _keep_answers(runtime, context, provider, copy, folder, unread, sent_with) if sent_with and unread else set()
    return cancelled, kept


def _keep_answers(
    runtime: PipelineRuntime,
    context: dg.AssetExecutionContext,
    provider: BatchProvider,
    copy: WorkingCopy,
    folder: PartitionFolder,
    superseded: Sequence[SubmittedBatch],
    sent_with: dict[int, RequestManifest],
) -> set[str]:
    """Put what the superseded batches answered into the reuse store; the fingerprints they answered.

    Waits (``superseded_wait_seconds`` at most) for the cancels to land: a batch still
    cancelling then keeps its answers, and its rows go again.
    """
    resource, options = runtime.resource(context), runtime.options
    store = runtime.reuse_store(copy)
    wanted = [b for b in superseded if b.attempt in sent_with]
    if store is None or not wanted or not options.superseded_wait_seconds:
        return set()
    ended = wait_ended(
        context.log, provider, [b.batch_id for b in wanted], max_workers=resource.max_concurrent_polls,
        delay=resource.poll_delay, seconds=options.superseded_wait_seconds,
    )  # fmt: skip
    answered: list[pd.DataFrame] = []
    for record in wanted:
        batch = ended.get(record.batch_id)
        if batch is None:
            context.log.warning(f"superseded batch {record.batch_id} did not end in {options.superseded_wait_seconds:.0f}s: its rows go again")
            continue
        try:
            files = provider.download_results(batch, folder.downloads)
        except (ProviderError, OSError) as exc:  # its files expired or gone: nothing to keep, not fatal
            context.log.warning(f"could not download what superseded batch {record.batch_id} answered ({exc}): its rows go again")
            continue
        answered.append(superseded_answers(sent_with[record.attempt], record.shard, files, output_model=runtime.spec.output_model))
    copy.push(folder.downloads)
    answers = pd.concat(answered, ignore_index=True) if answered else None
    if answers is None or not len(answers):
        return set()
    # One segment for them all; a request a later attempt answered again keeps that answer.
    runtime.record_answers(copy, store, answers.drop_duplicates(FINGERPRINT_COLUMN, keep="last"))
    kept = set(answers[FINGERPRINT_COLUMN])
    context.log.info(f"kept {len(kept)} answers the superseded batches {[b.batch_id for b in wanted]} had finished: those requests are not sent again")
    return kept
