"""The ledger: what the pipeline records in Dagster's event log, and how it is read back.

``<name>_batch`` records the batches it submitted in an observation on itself, the *submission*
(:data:`BATCHES_KEY` in its metadata); it is materialized once they have ended
(:mod:`batch_pipelines.pipeline.progress`). ``<name>_results`` records the follow-up batches it
submits for retried rows, and cancellations, as observations on itself (:data:`CONTROL_KEY`). The
event log is the plugin's only state besides the provider: a run on any machine reads the same
ledger.

A *round* is everything that happened to one partition since its latest submission: the first
attempt's batches and each retry's. Before submissions were observations, ``<name>_batch``'s
materialization held them: such a materialization (:data:`BATCHES_KEY`, no :data:`ROUND_KEY`)
still opens a round.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg

from batch_pipelines.providers import CLOCK_SKEW_SECONDS
from batch_pipelines.submission import SubmittedBatch

__all__ = [
    "BATCHES_KEY",
    "CONTROL_KEY",
    "PIPELINE_RUN_TAG",
    "ATTEMPT_RUN_TAG",
    "ROUND_KEY",
    "Round",
    "REUSE_RUN_TAG",
    "RESULTS_BATCH_IDS_KEY",
    "SOURCE_DIGEST_KEY",
    "SUBMITTED_COST_KEY",
    "batches_metadata",
    "control_metadata",
    "first_built",
    "is_submission",
    "load_round",
    "joined_batches",
    "latest_metadata",
    "results_cover",
    "round_finished",
    "metadata_int",
    "metadata_text",
    "read_batches",
    "run_submitted_cost",
]

#: Metadata key of the machine-readable list of batches a materialization or observation submitted.
BATCHES_KEY = "batch_pipelines/batches"
#: Metadata key saying what a control observation on ``<name>_results`` records: "retry" or "cancel".
CONTROL_KEY = "batch_pipelines/control"
#: Metadata key of the round (storage id of its submission) a control record or a finished ``<name>_batch`` belongs to.
ROUND_KEY = "batch_pipelines/round"
#: Metadata key of the batch ids a ``<name>_results`` materialization was joined from.
RESULTS_BATCH_IDS_KEY = "batch_ids"
#: Metadata key of the digest of the whole source a ``<name>_requests`` or ``<name>_results``
#: materialization was made from (:func:`batch_pipelines.requests.frame_digest`).
SOURCE_DIGEST_KEY = "batch_pipelines/source_digest"
#: Metadata key of the estimated cost (USD) of what a materialization or retry observation submitted.
SUBMITTED_COST_KEY = "submitted_cost_usd"
#: Run tags of the results runs the sensor launches.
PIPELINE_RUN_TAG = "batch_pipelines/pipeline"
ATTEMPT_RUN_TAG = "batch_pipelines/attempt"
#: Run tag that bypasses the reuse of answers for one run (a full resend): ``"off"``.
REUSE_RUN_TAG = "batch_pipelines/reuse"

#: Event records read per query; more wait for the next query or tick.
PAGE = 1000


def batches_metadata(batches: Iterable[SubmittedBatch]) -> dg.MetadataValue:
    return dg.MetadataValue.json([b.model_dump() for b in batches])


def is_submission(metadata: Mapping[str, Any]) -> bool:
    """Whether an event on ``<name>_batch`` opens a round (a submission, or an old-style materialization)."""
    return BATCHES_KEY in metadata and ROUND_KEY not in metadata


def read_batches(metadata: Mapping[str, Any]) -> list[SubmittedBatch]:
    """The batches recorded under :data:`BATCHES_KEY` in an event's metadata (none if absent)."""
    value = metadata.get(BATCHES_KEY)
    data = getattr(value, "value", value) or []
    return [SubmittedBatch.model_validate(item) for item in data]


def control_metadata(kind: Literal["retry", "cancel"], round_id: int, batches: Sequence[SubmittedBatch] = ()) -> dict[str, Any]:
    """Metadata of a control observation on ``<name>_results``."""
    return {CONTROL_KEY: kind, ROUND_KEY: dg.MetadataValue.int(round_id), BATCHES_KEY: batches_metadata(batches)}


def run_submitted_cost(instance: dg.DagsterInstance, run_id: str) -> float:
    """The estimated cost (USD) of everything the run has submitted so far, in any pipeline."""
    total = 0.0
    kinds = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_OBSERVATION}
    for entry in instance.all_logs(run_id, of_type=kinds):
        event = entry.asset_materialization or entry.asset_observation
        value = event.metadata.get(SUBMITTED_COST_KEY) if event is not None else None
        total += float(getattr(value, "value", value) or 0.0)
    return total


def metadata_int(value: Any) -> int | None:
    value = getattr(value, "value", value)
    return int(value) if value is not None else None


def metadata_text(value: Any) -> str | None:
    value = getattr(value, "value", value)
    return str(value) if value is not None else None


@dataclass(frozen=True)
class Round:
    """A partition's batches since its latest submission."""

    partition: str | None
    #: Storage id of the submission that opened the round.
    storage_id: int
    batches: tuple[SubmittedBatch, ...]
    #: A cancellation was recorded in this round: cancelled rows are not retried.
    cancelled: bool

    @property
    def attempt(self) -> int:
        return max((b.attempt for b in self.batches), default=1)

    def plus(self, batches: Iterable[SubmittedBatch]) -> Round:
        """This round with more batches (a retry, a resubmission)."""
        return Round(self.partition, self.storage_id, self.batches + tuple(batches), self.cancelled)


def _opener(instance: dg.DagsterInstance, batch_key: dg.AssetKey, partitions: list[str] | None) -> tuple[int, Mapping[str, Any]] | None:
    """The storage id and metadata of the partition's latest submission (paging back over progress observations)."""
    found: tuple[int, Mapping[str, Any]] | None = None
    before = None
    limit = 50  # the submission is usually among the latest few events; a long-running round pages on
    while found is None:
        page = instance.fetch_observations(
            dg.AssetRecordsFilter(batch_key, asset_partitions=partitions, before_storage_id=before), limit=limit
        ).records
        for record in page:
            metadata = record.asset_observation.metadata  # type: ignore[union-attr]
            if is_submission(metadata):
                found = (record.storage_id, metadata)
                break
        if len(page) < limit:
            break
        before, limit = page[-1].storage_id, PAGE
    materialized = instance.fetch_materializations(dg.AssetRecordsFilter(batch_key, asset_partitions=partitions), limit=1).records
    if materialized and (found is None or materialized[0].storage_id > found[0]):
        metadata = materialized[0].asset_materialization.metadata  # type: ignore[union-attr]
        if is_submission(metadata):
            return materialized[0].storage_id, metadata
    return found


def load_round(
    instance: dg.DagsterInstance, batch_key: dg.AssetKey, results_key: dg.AssetKey, partition: str | None
) -> Round | None:
    """The current round of ``partition`` from the event log, None if never submitted."""
    partitions = [partition] if partition is not None else None
    opened = _opener(instance, batch_key, partitions)
    if opened is None:
        return None
    round_id, opening = opened
    batches = read_batches(opening)
    cancelled = False
    after = round_id
    while True:
        page = instance.fetch_observations(
            dg.AssetRecordsFilter(results_key, asset_partitions=partitions, after_storage_id=after), limit=PAGE, ascending=True
        ).records
        for record in page:
            metadata = record.asset_observation.metadata  # type: ignore[union-attr]
            if metadata_int(metadata.get(ROUND_KEY)) != round_id:
                continue
            kind = metadata_text(metadata.get(CONTROL_KEY))
            if kind == "retry":
                batches += read_batches(metadata)
            elif kind == "cancel":
                cancelled = True
        if len(page) < PAGE:
            break
        after = page[-1].storage_id
    return Round(partition, round_id, tuple(batches), cancelled)


def latest_metadata(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: Collection[str | None], *, page_size: int = PAGE
) -> dict[str | None, Mapping[str, Any]]:
    """Each partition's latest materialization of ``key``, its metadata (one never materialized: absent).

    A page of records at a time over all the partitions asked, not a query each: a tick that hands
    off a hundred partitions reads a few pages.
    """
    found: dict[str | None, Mapping[str, Any]] = {}
    if None in partitions:  # an unpartitioned asset
        records = instance.fetch_materializations(dg.AssetRecordsFilter(key), limit=1).records
        if records:
            found[None] = records[0].asset_materialization.metadata  # type: ignore[union-attr]
    wanted = {p for p in partitions if p is not None}
    before = None
    while wanted:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(key, asset_partitions=sorted(wanted), before_storage_id=before), limit=page_size
        ).records
        for record in page:
            if record.partition_key in wanted:
                found[record.partition_key] = record.asset_materialization.metadata  # type: ignore[union-attr]
                wanted.discard(record.partition_key)
        if len(page) < page_size:
            break
        before = page[-1].storage_id
    return found


def round_finished(latest_batch: Mapping[str, Any] | None, round_id: int) -> bool:
    """Whether ``<name>_batch``'s latest materialization (``latest_batch``) is the round's: its batches ended."""
    return latest_batch is not None and metadata_int(latest_batch.get(ROUND_KEY)) == round_id


def joined_batches(instance: dg.DagsterInstance, results_key: dg.AssetKey, partition: str | None) -> set[str]:
    """The batches the partition's latest results were joined from (their answers recorded then)."""
    joined = latest_metadata(instance, results_key, [partition]).get(partition)
    return _joined_from(joined) if joined is not None else set()


def _joined_from(results: Mapping[str, Any]) -> set[str]:
    return set(getattr(results.get(RESULTS_BATCH_IDS_KEY), "value", None) or ())


def results_cover(joined: Mapping[str, Any] | None, built: Mapping[str, Any] | None, batch_ids: Iterable[str]) -> bool:
    """Whether a partition's latest results (``joined``) are already what joining ``batch_ids`` would
    give: joined from all of them, and from the source its latest request files (``built``) were built from."""
    if joined is None or built is None:
        return False
    digest = metadata_text(joined.get(SOURCE_DIGEST_KEY))
    if not digest or digest != metadata_text(built.get(SOURCE_DIGEST_KEY)):  # "" when it could not be told
        return False
    return set(batch_ids) <= _joined_from(joined)


def first_built(instance: dg.DagsterInstance, keys: Sequence[dg.AssetKey], partition: str | None) -> float | None:
    """When the partition's batches may have started: its first materialization of any of ``keys``.

    No batch of the partition can be older than its first request files. The provider's clock may
    run behind Dagster's, hence the margin. None (list everything) when the event log holds none,
    e.g. after the assets were wiped.
    """
    started = []
    for key in keys:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(key, asset_partitions=[partition] if partition is not None else None), limit=1, ascending=True
        ).records
        started += [r.timestamp for r in records]
    return min(started) - CLOCK_SKEW_SECONDS if started else None
