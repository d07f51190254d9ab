"""Submit each shard once: re-attach to the batch a shard already has, keep the first of two.

The money-protecting core. A shard is identified by its fingerprint (content, provider, endpoint,
attempt), carried in its batch's metadata. Before creating anything, the partition's batches are
listed at the provider (newest first, back to ``since``): a shard whose fingerprint already has a
batch that did not fail validation re-attaches to it, so a retried run, a re-materialization, a
crash between the provider's accept and the run's record, or a create whose answer was lost never
pays twice. Call :meth:`Submitter.submit` holding the partition's lock (the Dagster face's, held in
the instance: :mod:`batch_pipelines.pipeline.partition_lock`); submitters the lock does not cover
are reconciled by :meth:`Submitter.keep_first`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from batch_pipelines.providers import Batch, BatchProvider, BatchStatus
from batch_pipelines.requests import RequestManifest
from batch_pipelines.submission.tags import (
    ASSET_TAG,
    ATTEMPT_TAG,
    FINGERPRINT_TAG,
    PARTITION_TAG,
    PIPELINE_TAG,
    RESUBMIT_TAG,
    RUN_TAG,
    SHARD_TAG,
    partition_tag,
)
from batch_pipelines.submission.types import Submission, SubmittedBatch

__all__ = ["Log", "Submitter"]


class Log(Protocol):
    """What a submitter reports through: a ``logging.Logger`` or Dagster's ``context.log``."""

    def info(self, msg: str) -> object: ...

    def warning(self, msg: str) -> object: ...


def _no_tags(attempt: int) -> Mapping[str, str]:
    return {}


@dataclass
class Submitter:
    """Submits the shards of one partition of one pipeline for one run."""

    provider: BatchProvider
    pipeline: str
    partition: str | None
    #: The provider's name as the fingerprints use it (the resource's ``provider``).
    provider_name: str
    completion_window: str
    run_id: str
    #: Epoch seconds no batch of this partition can be older than (None: list all the history).
    since: float | None = None
    #: The user's extra batch tags for an attempt.
    user_tags: Callable[[int], Mapping[str, str]] = _no_tags
    #: How long the provider keeps each batch's output and error files (None: its default).
    output_expires_after_seconds: int | None = None
    log: Log = field(default_factory=lambda: logging.getLogger(__name__))

    @property
    def tags(self) -> dict[str, str]:
        """The tags that find this partition's batches."""
        return {PIPELINE_TAG: self.pipeline, PARTITION_TAG: partition_tag(self.partition)}

    def submit(self, manifest: RequestManifest, *, asset: str, resubmit: Mapping[int, int] | None = None) -> list[Submission]:
        """Submit each shard of ``manifest`` once; one :class:`Submission` per shard, in shard order.

        ``resubmit`` (shard -> times refused for a full queue) limits the call to those shards,
        tagged with their count: their refused batch failed, ran nothing, and is passed over.
        """
        known = self.first_by_fingerprint() if manifest.shards else {}
        out: list[Submission] = []
        created: list[int] = []
        for index in sorted(resubmit) if resubmit is not None else range(len(manifest.shards)):
            shard = manifest.shards[index]
            fingerprint = shard.fingerprint(self.provider_name, manifest.endpoint)
            batch = known.get(fingerprint)
            again = batch is not None
            if batch is None:
                metadata = {
                    **self.user_tags(manifest.attempt),
                    **self.tags,
                    FINGERPRINT_TAG: fingerprint,
                    ASSET_TAG: asset,
                    RUN_TAG: self.run_id,
                    ATTEMPT_TAG: str(manifest.attempt),
                    SHARD_TAG: str(index),
                    **({RESUBMIT_TAG: str(resubmit[index])} if resubmit else {}),
                }
                # Only a policy that is set is passed on: a provider without the parameter is never given it.
                expiry = (
                    {"output_expires_after_seconds": self.output_expires_after_seconds}
                    if self.output_expires_after_seconds is not None
                    else {}
                )
                batch = self.provider.submit(
                    shard.path, endpoint=manifest.endpoint, completion_window=self.completion_window, metadata=metadata, **expiry
                )
                self.log.info(f"submitted {shard.path.name} ({shard.rows} requests) as batch {batch.id}")
                created.append(len(out))
            else:
                self.log.info(f"{shard.path.name} is already batch {batch.id} ({batch.status}): re-attached")
            record = SubmittedBatch(batch_id=batch.id, shard=index, fingerprint=fingerprint, attempt=manifest.attempt)
            out.append(Submission(record=record, batch=batch, reattached=again))
        if created:
            self.keep_first(out, created)
        return out

    def first_by_fingerprint(self) -> dict[str, Batch]:
        """The oldest batch of each fingerprint among the partition's, leaving out batches that failed validation.

        The oldest, because a fingerprint with several batches (submitters the partition lock did
        not cover) keeps its first: every submitter agrees on it (see :meth:`keep_first`). A batch
        that failed validation ran nothing: its shard may go again.
        """
        first: dict[str, Batch] = {}
        for batch in self.provider.find_batches(self.tags, created_after=self.since):  # newest first: the oldest stays
            fingerprint = batch.metadata.get(FINGERPRINT_TAG)
            if fingerprint and batch.status != BatchStatus.FAILED:
                first[fingerprint] = batch
        return first

    def keep_first(self, out: list[Submission], created: Sequence[int]) -> None:
        """The last resort against a duplicate: another submitter that the lock did not cover.

        Runs that do not share the lock (two deployments on two instances) may both find no batch and both create one. Listing again after creating shows
        both; every submitter keeps the oldest live batch of a fingerprint and cancels its own if it
        is not that one. The loser may have started: this bounds the damage, the lock prevents it.
        """
        live = self.first_by_fingerprint()
        for position in created:
            mine = out[position]
            first = live.get(mine.record.fingerprint)
            if first is None or first.id == mine.batch.id:
                continue
            self.log.warning(
                f"batch {mine.batch.id} duplicates batch {first.id} created for the same shard by another submitter: "
                f"cancelling {mine.batch.id}, keeping {first.id}"
            )
            try:
                self.provider.cancel_batch(mine.batch.id)
            except Exception as exc:  # noqa: BLE001 - already finished: it stays a duplicate, reported above
                self.log.warning(f"could not cancel duplicate batch {mine.batch.id}: {exc}")
            out[position] = Submission(record=mine.record.model_copy(update={"batch_id": first.id}), batch=first, reattached=True)
