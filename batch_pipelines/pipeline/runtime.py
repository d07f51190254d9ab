"""What a pipeline's steps share at run time, and its ``<name>_batch`` step; the factory's asset
functions only delegate.

One :class:`PipelineRuntime` per pipeline holds its name, request spec, options and asset keys.
It turns a Dagster context into the Dagster-free parts below it: the partition's folder, its
lock, the reuse store and the submit-once engine (:mod:`batch_pipelines.submission`), and records
what happened in the ledger. The steps: ``<name>_requests`` is :mod:`.request_files`,
``<name>_batch`` is here, ``<name>_results`` is :mod:`.collect`; what a submission may cost,
:mod:`.budget`. A run may cover several partitions (a backfill's ``multi_run`` policy): each is
built and submitted on its own (:mod:`.run_partitions`).

Every step works on a :class:`~batch_pipelines.storage.WorkingCopy` of the resource's storage
(the storage itself on a local disk): it pulls the files it reads, and pushes what it wrote
before it lets go of the partition's lock (:mod:`.partition_lock`, held in the instance).
"""

# No ``from __future__ import annotations``: Dagster reads annotations of the functions it wraps.
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from batch_pipelines.pipeline.blocking import cancel_if_stopped, wait_for_batches
from batch_pipelines.pipeline.budget import SubmissionBudget
from batch_pipelines.pipeline.ledger import (
    BATCHES_KEY,
    REUSE_RUN_TAG,
    SUBMITTED_COST_KEY,
    batches_metadata,
    control_metadata,
    first_built,
    load_round,
)
from batch_pipelines.pipeline.metadata import usd
from batch_pipelines.pipeline.options import PipelineOptions
from batch_pipelines.pipeline.partition_lock import PartitionLock
from batch_pipelines.pipeline.progress import BatchState, console_metadata, finished_metadata
from batch_pipelines.pipeline.resource import BatchProviderResource
from batch_pipelines.pipeline.run_partitions import run_partitions
from batch_pipelines.providers import Batch, BatchProvider
from batch_pipelines.requests import (
    IDS_NAME,
    MANIFEST_NAME,
    RequestManifest,
    RequestSpec,
    SendOnce,
)
from batch_pipelines.results import KnownAnswers, ReuseStore
from batch_pipelines.storage import WorkingCopy
from batch_pipelines.submission import (
    PartitionFolder,
    Submission,
    Submitter,
    partition_of_tag,
    partition_tag,
    reuse_dir,
)

__all__ = ["PipelineRuntime"]

Context = dg.AssetExecutionContext | dg.OpExecutionContext
#: Values of the reuse run tag that bypass reuse for the run.
_OFF = frozenset({"off", "false", "no", "0"})
#: What a step needs of an attempt's files to read its manifest and id map (not its shards).
_MANIFEST_FILES = frozenset({MANIFEST_NAME, IDS_NAME})


@dataclass(frozen=True)
class PipelineRuntime:
    """The run-time behaviour of one pipeline's assets and cancel job."""

    name: str
    spec: RequestSpec
    options: PipelineOptions
    source_key: dg.AssetKey
    requests_key: dg.AssetKey
    batch_key: dg.AssetKey
    results_key: dg.AssetKey

    # ---- what every step needs ---------------------------------------------------------------
    def resource(self, context: Context) -> BatchProviderResource:
        return getattr(context.resources, self.options.resource_key)

    @contextmanager
    def files(self, context: Context, resource: BatchProviderResource) -> Iterator[WorkingCopy]:
        """The step's working copy of the storage (its scratch folder, if any, deleted after the step)."""
        with WorkingCopy(resource.storage(context.instance)) as copy:
            yield copy

    def folder(self, copy: WorkingCopy, partition: str | None) -> PartitionFolder:
        return PartitionFolder.of(copy.local(), self.name, partition)

    def lock(self, context: Context, partition: str | None) -> AbstractContextManager[None]:
        """The partition's lock, held in the instance for this run."""
        return PartitionLock(context.instance, context.run_id, str(context.op_handle), log=context.log.info)(self.name, partition)

    def manifest(self, copy: WorkingCopy, folder: PartitionFolder, attempt: int, *, shards: bool = False) -> RequestManifest:
        """An attempt's manifest, its id map (and its shards, to send them) pulled first."""
        copy.pull(folder.attempt(attempt), names=None if shards else _MANIFEST_FILES)
        return RequestManifest.read(folder.attempt(attempt) / MANIFEST_NAME)

    def reuse_store(self, copy: WorkingCopy) -> ReuseStore | None:
        """The pipeline's store of answers bought (None when the pipeline does not reuse answers).

        Nothing of it is pulled: a lookup (:meth:`known_answers`) pulls what it reads, and a
        step that only records answers reads none.
        """
        if not self.options.reuse:
            return None
        return ReuseStore(reuse_dir(copy.local(), self.name), retention_days=self.options.reuse_retention_days)

    def known_answers(self, copy: WorkingCopy, store: ReuseStore) -> KnownAnswers:
        """What the store holds: on object storage each segment's keys pulled, its answers when asked for."""
        if copy.copies:
            listed = [f.path.rsplit("/", 1)[-1] for f in copy.storage.files(copy.stored(store.root))]
            copy.pull(store.root, names=store.lookup_files(listed))

        def fetch(path: Path) -> Path:
            copy.pull(path.parent, names={path.name})
            return path

        return store.known(fetch=fetch)

    def record_answers(self, copy: WorkingCopy, store: ReuseStore, answers: pd.DataFrame) -> None:
        """Add ``answers`` to the reuse store as a segment, stored; the expired segments deleted."""
        store.record(answers)
        copy.push(store.root)
        if copy.copies:  # segments this step did not pull are deleted where they are stored
            stored = copy.storage.files(copy.stored(store.root))
            expired = set(store.expired(f.path.rsplit("/", 1)[-1] for f in stored))
            copy.storage.delete([f.path for f in stored if f.path.rsplit("/", 1)[-1] in expired])

    def send_once(self, context: Context, copy: WorkingCopy) -> SendOnce | None:
        """What a build of this run holds back: requests answered already, or repeated (None: send every row)."""
        store = self.reuse_store(copy)
        if store is None or context.run.tags.get(REUSE_RUN_TAG, "").strip().lower() in _OFF:
            return None
        return SendOnce(self.known_answers(copy, store))

    def since(self, instance: dg.DagsterInstance, partition: str | None) -> float | None:
        """How far back the partition's batches can reach at the provider."""
        return first_built(instance, [self.requests_key, self.batch_key], partition)

    def submitter(
        self, context: dg.AssetExecutionContext, resource: BatchProviderResource, provider: BatchProvider, partition: str | None
    ) -> Submitter:
        return Submitter(
            provider=provider,
            pipeline=self.name,
            partition=partition,
            provider_name=resource.provider,
            completion_window=resource.window,
            run_id=context.run.run_id,
            since=self.since(context.instance, partition),
            user_tags=lambda attempt: self.options.user_tags(partition, attempt),
            output_expires_after_seconds=resource.output_expires_after_seconds,
            log=context.log,
        )

    @contextmanager
    def watching(self, context: dg.AssetExecutionContext, provider: BatchProvider, partition: str | None) -> Iterator[list[str]]:
        """Blocking mode: the batches added to the yielded list are cancelled if the run is terminated."""
        enabled = self.options.blocking and self.options.cancel_on_termination

        def since() -> float | None:  # asked only if the run stops
            return self.since(context.instance, partition)

        with cancel_if_stopped(context, provider, enabled=enabled, pipeline=self.name, partition=partition, since=since) as watched:
            yield watched

    def budget(self, resource: BatchProviderResource) -> SubmissionBudget:
        return SubmissionBudget(self.name, self.spec, self.options, resource)

    def wait(self, context: dg.AssetExecutionContext, resource: BatchProviderResource, provider: BatchProvider, ids: Sequence[str]) -> list[Batch]:
        return wait_for_batches(context.log, provider, ids, max_workers=resource.max_concurrent_polls, delay=resource.poll_delay)

    # ---- <name>_batch ---------------------------------------------------------------------------
    def submit_batches(self, context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        """Submit each partition's shards; record each submission. The asset is materialized when the
        batches have ended: by the sensor, or here in blocking mode (one partition per run).

        A partition that cannot be submitted (no request files, over budget, the provider
        refusing) does not stop the run's other partitions: they are submitted and recorded, then
        the run fails naming the partitions that were not.
        """
        partitions = run_partitions(context)
        if self.options.blocking:
            if len(partitions) > 1:
                raise dg.Failure(f"{self.name} runs in blocking mode: one partition per run, not {len(partitions)}")
            yield from self.submit_partition(context, partitions[0])
            return
        failed: dict[str, str] = {}
        for partition in partitions:
            try:
                yield from self.submit_partition(context, partition)
            except Exception as exc:  # noqa: BLE001 - reported with the partition, after the others went
                if len(partitions) == 1:
                    raise
                failed[str(partition)] = getattr(exc, "description", None) or f"{type(exc).__name__}: {exc}"
                context.log.error(f"{self.name} {partition}: not submitted: {failed[str(partition)]}")
        if failed:
            details = "\n".join(f"partition {p}: {why}" for p, why in failed.items())
            raise dg.Failure(
                description=f"{len(failed)} of {len(partitions)} partitions were not submitted (the others were):\n{details}",
                metadata={"not_submitted": dg.MetadataValue.json(sorted(failed))},
            )

    def submit_partition(self, context: dg.AssetExecutionContext, partition: str | None) -> Iterator[dg.MaterializeResult]:
        """Submit one partition's shards; record the submission (blocking mode: wait and materialize)."""
        resource = self.resource(context)
        with (
            self.files(context, resource) as copy,
            resource.get_provider() as provider,
            self.watching(context, provider, partition) as watched,
        ):
            folder = self.folder(copy, partition)
            manifest_path = folder.attempt(1) / MANIFEST_NAME
            with self.lock(context, partition):  # the request files cannot change while they are read and sent
                copy.pull(folder.attempt(1))
                if not manifest_path.exists():
                    raise dg.Failure(
                        f"no request files at {copy.url(manifest_path)}: materialize {self.name}_requests for this partition first"
                    )
                manifest = RequestManifest.read(manifest_path)
                cost = self.budget(resource).check(context, manifest)
                submitted = self.submitter(context, resource, provider, partition).submit(manifest, asset=self.batch_key.to_user_string())
            watched.extend(s.batch.id for s in submitted)
            links = {s.batch.id: url for s in submitted if (url := provider.console_url(s.batch.id))}
            context.log_event(
                dg.AssetObservation(
                    asset_key=self.batch_key, partition=partition, metadata=self.submission_metadata(resource, manifest, submitted, cost, links)
                )
            )
            if self.options.blocking:
                ended = self.wait(context, resource, provider, [s.batch.id for s in submitted])
                current = load_round(context.instance, self.batch_key, self.results_key, partition)
                round_id = current.storage_id if current is not None else None
                yield dg.MaterializeResult(metadata=finished_metadata([BatchState.of(b) for b in ended], round_id=round_id, links=links))

    def submission_metadata(
        self,
        resource: BatchProviderResource,
        manifest: RequestManifest,
        submitted: Sequence[Submission],
        cost: float | None,
        links: dict[str, str],
    ) -> dict[str, Any]:
        """The submission observation: the round's opener in the ledger, and what a reader sees of it."""
        records = [s.record for s in submitted]
        metadata: dict[str, Any] = {
            BATCHES_KEY: batches_metadata(records),
            "status": "submitted",
            "batch_ids": dg.MetadataValue.json([r.batch_id for r in records]),
            "reattached": sum(1 for s in submitted if s.reattached),
            "submitted": sum(1 for s in submitted if not s.reattached),
            "submitted_status": dg.MetadataValue.json({s.batch.id: str(s.batch.status) for s in submitted}),
            "requests": manifest.requests,
            "provider": resource.provider,
            "completion_window": resource.window,
        }
        if resource.output_expires_after_seconds is not None:
            metadata["output_expires_after_seconds"] = resource.output_expires_after_seconds
        # The model the provider reports (its usage comes with the finished batches: progress.py).
        if models := {s.batch.id: s.batch.model for s in submitted if s.batch.model}:
            metadata["models"] = dg.MetadataValue.json(models)
        if cost is not None and any(not s.reattached for s in submitted):
            # What this run paid for: a per-run budget adds it up (a re-attached batch was paid before).
            new = sum(manifest.shards[s.record.shard].rows for s in submitted if not s.reattached)
            metadata[SUBMITTED_COST_KEY] = usd(cost * new / manifest.requests)
        return {**metadata, **console_metadata(links)}

    # ---- <name>_cancel --------------------------------------------------------------------------
    def cancel(self, context: dg.OpExecutionContext, partitions: Sequence[str]) -> None:
        resource = self.resource(context)
        for tag in list(partitions) or [partition_tag(None)]:
            partition = partition_of_tag(tag)
            with self.lock(context, partition):  # no submit of the partition creates a batch meanwhile
                cancelled = resource.cancel_partitions(self.name, [partition])
            context.log.info(f"{self.name} {tag}: cancelled {len(cancelled)} batches {[b.id for b in cancelled]}")
            current = load_round(context.instance, self.batch_key, self.results_key, partition)
            if current is not None:
                context.log_event(
                    dg.AssetObservation(
                        asset_key=self.results_key,
                        partition=partition,
                        metadata={**control_metadata("cancel", current.storage_id), "cancelled": len(cancelled)},
                    )
                )
