"""The asset factory: one call builds a pipeline's assets, sensor, checks and cancel job.

::

    pipeline = build_batch_pipeline("classify", source=texts, spec=RequestSpec(...))
    defs = dg.Definitions.merge(pipeline.defs, dg.Definitions(assets=[texts], resources={...}))

builds, with the source's partitions:

``<name>_requests``
    The source DataFrame as validated, sharded JSONL request files and a manifest, written to a
    deterministic folder (``<storage>/<name>/<partition>/attempt-1``); downstream assets find them
    there, no pickled object travels.
``<name>_batch``
    One batch per shard, tagged with pipeline, partition, content fingerprint, asset, run, attempt
    and shard. Before submitting, the partition's batches are listed at the provider: a shard
    whose fingerprint already has a live or finished batch re-attaches to it, so a retried run, a
    re-materialization or a crash between the provider's accept and Dagster's record never pays
    twice. Two runs of one partition take turns (an advisory lock in the storage directory), so
    racing submits re-attach too. The batch ids are recorded in the materialization for the sensor.
``<name>_sensor``
    Polls the batches and launches ``<name>_results`` when a partition's batches are done (see
    :mod:`batch_pipelines.sensors`). Not built in blocking mode, where runs poll themselves.
``<name>_results``
    Downloads every batch's files, joins them back to the source rows (one outcome per row) and,
    while retryable rows remain and attempts are left, submits them again as a follow-up batch
    (recorded as an observation; the sensor tracks it) instead of materializing. A shard the
    provider refused because its token queue was full (``token_limit_exceeded``) is submitted
    again the same way, after a delay, without spending an attempt of its rows. The final
    materialization is the whole table, every row once, returned through the user's IO manager,
    with counts, tokens, cost and checks.
``<name>_cancel``
    A job cancelling the in-flight batches of chosen partitions (config ``partitions``).
"""

# No ``from __future__ import annotations`` here: Dagster reads the context annotations of the
# decorated functions at definition time.
import fcntl
import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import orjson
import pandas as pd

from batch_pipelines import results as _results
from batch_pipelines.checks import evaluate_checks, results_check_specs
from batch_pipelines.providers import CLOCK_SKEW_SECONDS, Batch, BatchProvider, BatchStatus, ResultFiles
from batch_pipelines.requests import MANIFEST_NAME, RequestManifest, RequestSpec, RequestValidationError, build_request_files
from batch_pipelines.resources import PARTITION_TAG, PIPELINE_TAG, RESUBMIT_TAG, BatchProviderResource
from batch_pipelines.sensors import (
    BATCHES_KEY,
    Round,
    SubmittedBatch,
    batches_metadata,
    build_batch_sensor,
    control_metadata,
    load_round,
    poll_batches,
)

__all__ = ["BatchPipeline", "CancelPartitionsConfig", "build_batch_pipeline"]

SourceLike = dg.AssetKey | dg.AssetSpec | dg.AssetsDefinition | str | Sequence[str]
#: Extra batch tags: fixed, or computed from (partition key, attempt).
BatchTags = Mapping[str, str] | Callable[[str | None, int], Mapping[str, str]]

#: The value of the partition tag for an unpartitioned pipeline.
UNPARTITIONED = "__all__"
_PREVIEW_ROWS = 10


@dataclass(frozen=True)
class BatchPipeline:
    """What :func:`build_batch_pipeline` built. Merge ``defs`` into your code location."""

    name: str
    requests_asset: dg.AssetsDefinition
    batch_asset: dg.AssetsDefinition
    results_asset: dg.AssetsDefinition
    checks: tuple[dg.AssetCheckSpec, ...]
    #: None in blocking mode: runs poll their own batches.
    sensor: dg.SensorDefinition | None
    cancel_job: dg.JobDefinition

    @property
    def assets(self) -> list[dg.AssetsDefinition]:
        return [self.requests_asset, self.batch_asset, self.results_asset]

    @property
    def defs(self) -> dg.Definitions:
        """Assets, sensor and cancel job; the resource (``BatchProviderResource``) is yours to add."""
        return dg.Definitions(assets=self.assets, sensors=[self.sensor] if self.sensor else [], jobs=[self.cancel_job])


class CancelPartitionsConfig(dg.Config):
    """Run config of ``<name>_cancel``."""

    partitions: list[str] = []


def build_batch_pipeline(
    name: str,
    *,
    source: SourceLike,
    spec: RequestSpec,
    partitions_def: dg.PartitionsDefinition | None = None,
    policy: Literal["fail", "quarantine"] = "fail",
    max_attempts: int = 2,
    retry_invalid_output: bool = False,
    failure_rate_threshold: float = 0.05,
    blocking: bool = False,
    cancel_on_termination: bool = True,
    resource_key: str = "batch_provider",
    io_manager_key: str = "io_manager",
    group_name: str | None = None,
    key_prefix: str | Sequence[str] | None = None,
    batch_tags: BatchTags | None = None,
    max_requests_per_shard: int | None = None,
    sensor_minimum_interval_seconds: int = 30,
    sensor_tick_budget_seconds: float = 30.0,
    sensor_default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> BatchPipeline:
    """Build the assets, sensor, checks and cancel job that run ``spec`` over ``source`` as batches.

    Args:
        name: prefix of every definition (``<name>_requests``, ``<name>_batch``...) and the tag
            that finds this pipeline's batches at the provider: keep it stable.
        source: the asset holding the rows, a pandas DataFrame loaded through its IO manager.
        spec: how a row becomes a request (endpoint, model, template, output model, key column).
        partitions_def: defaults to the source's (when ``source`` is an AssetSpec or
            AssetsDefinition); each partition is submitted, polled and joined on its own.
        policy: ``"fail"`` rejects the partition if any row is invalid; ``"quarantine"`` sends
            the valid rows and reports the others as ``rejected``.
        max_attempts: how many times a row may be sent (1: never retried).
        retry_invalid_output: also send again rows whose structured output did not validate.
        failure_rate_threshold: the failure-rate check fails above this share of rows.
        blocking: poll inside the run (small jobs, tests): materialize the three assets together;
            no sensor is built.
        cancel_on_termination: in blocking mode, cancel the batches when the run is terminated.
        resource_key: key of the :class:`BatchProviderResource`.
        io_manager_key: IO manager storing the results DataFrame.
        batch_tags: extra batch metadata (e.g. a team tag), or a function of (partition, attempt)
            returning it; at most 8 pairs (the provider keeps 16, the pipeline uses up to 8).
        max_requests_per_shard: split request files further than the provider's limits require.
        sensor_minimum_interval_seconds: seconds between two sensor ticks.
        sensor_tick_budget_seconds: seconds one tick may spend polling.
        sensor_default_status: whether the sensor runs as soon as the code location loads.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"pipeline name {name!r}: use letters, digits and underscores (it names assets and tags batches)")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    source_key, source_partitions = _source(source)
    partitions_def = partitions_def if partitions_def is not None else source_partitions
    prefix = [key_prefix] if isinstance(key_prefix, str) else list(key_prefix or [])
    requests_key = dg.AssetKey([*prefix, f"{name}_requests"])
    batch_key = dg.AssetKey([*prefix, f"{name}_batch"])
    results_key = dg.AssetKey([*prefix, f"{name}_results"])
    check_specs = results_check_specs(results_key, structured=spec.output_model is not None, threshold=failure_rate_threshold)
    ctx = _Pipeline(
        name=name,
        spec=spec,
        policy=policy,
        max_attempts=max_attempts,
        retry_invalid_output=retry_invalid_output,
        failure_rate_threshold=failure_rate_threshold,
        blocking=blocking,
        cancel_on_termination=cancel_on_termination,
        resource_key=resource_key,
        requests_key=requests_key,
        batch_key=batch_key,
        results_key=results_key,
        batch_tags=batch_tags,
        max_requests_per_shard=max_requests_per_shard,
    )
    common: dict[str, Any] = dict(partitions_def=partitions_def, group_name=group_name, required_resource_keys={resource_key})

    @dg.asset(
        key=requests_key,
        ins={"source": dg.AssetIn(key=source_key)},
        description=f"Request files for {name}: the rows of {source_key.to_user_string()} as validated, sharded JSONL.",
        kinds={"jsonl"},
        **common,
    )
    def requests_asset(context: dg.AssetExecutionContext, source: pd.DataFrame) -> dg.MaterializeResult:
        return ctx.build_requests(context, source)

    @dg.asset(
        key=batch_key,
        deps=[requests_asset],
        description=f"The provider batches running {name}'s request files (re-attached, never submitted twice).",
        **common,
    )
    def batch_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return ctx.submit_batches(context)

    # A multi_asset for can_subset: a run that sends a retry instead of materializing must not
    # owe Dagster its check results (those outputs are only optional on a subsettable op).
    @dg.multi_asset(
        name=f"{name}_results",
        outs={
            "result": dg.AssetOut(
                key=results_key,
                io_manager_key=io_manager_key,
                is_required=blocking,
                description=f"{name}'s results joined back to the source rows: every row once, with its outcome.",
            )
        },
        ins={"source": dg.AssetIn(key=source_key)},
        deps=[batch_asset],
        check_specs=check_specs,
        can_subset=True,
        **common,
    )
    def results_asset(context: dg.AssetExecutionContext, source: pd.DataFrame) -> Iterator[Any]:
        yield from ctx.collect_results(context, source)

    @dg.op(name=f"{name}_cancel_batches", required_resource_keys={resource_key})
    def cancel_op(context: dg.OpExecutionContext, config: CancelPartitionsConfig) -> None:
        ctx.cancel(context, config.partitions)

    @dg.job(name=f"{name}_cancel", description=f"Cancel the in-flight batches of chosen partitions of {name}.")
    def cancel_job() -> None:
        cancel_op()

    sensor = None
    if not blocking:
        sensor = build_batch_sensor(
            name=name,
            batch_key=batch_key,
            results_key=results_key,
            resource_key=resource_key,
            minimum_interval_seconds=sensor_minimum_interval_seconds,
            tick_budget_seconds=sensor_tick_budget_seconds,
            default_status=sensor_default_status,
        )
    return BatchPipeline(
        name=name,
        requests_asset=requests_asset,
        batch_asset=batch_asset,
        results_asset=results_asset,
        checks=tuple(check_specs),
        sensor=sensor,
        cancel_job=cancel_job,
    )


def _source(source: SourceLike) -> tuple[dg.AssetKey, dg.PartitionsDefinition | None]:
    if isinstance(source, dg.AssetsDefinition):
        return source.key, source.partitions_def
    if isinstance(source, dg.AssetSpec):
        return source.key, source.partitions_def
    if isinstance(source, dg.AssetKey):
        return source, None
    return dg.AssetKey.from_coercible(source), None


def _partition_dir(partition: str | None) -> str:
    """A partition key as a folder name: itself when safe, else a safe slug plus a short hash."""
    if partition is None:
        return UNPARTITIONED
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", partition):
        return partition
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", partition)[:60]
    return f"{slug}-{hashlib.sha256(partition.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class _Pipeline:
    """What the assets of one pipeline do; the asset functions above only delegate here."""

    name: str
    spec: RequestSpec
    policy: Literal["fail", "quarantine"]
    max_attempts: int
    retry_invalid_output: bool
    failure_rate_threshold: float
    blocking: bool
    cancel_on_termination: bool
    resource_key: str
    requests_key: dg.AssetKey
    batch_key: dg.AssetKey
    results_key: dg.AssetKey
    batch_tags: BatchTags | None
    max_requests_per_shard: int | None

    # ---- helpers shared by the assets ----------------------------------------------------------
    def resource(self, context: dg.AssetExecutionContext | dg.OpExecutionContext) -> BatchProviderResource:
        return getattr(context.resources, self.resource_key)

    def folder(self, resource: BatchProviderResource, instance: dg.DagsterInstance, partition: str | None) -> Path:
        return resource.storage_root(instance) / self.name / _partition_dir(partition)

    def attempt_dir(self, folder: Path, attempt: int) -> Path:
        return folder / f"attempt-{attempt}"

    # ---- <name>_requests ----------------------------------------------------------------------
    def build_requests(self, context: dg.AssetExecutionContext, source: pd.DataFrame) -> dg.MaterializeResult:
        resource = self.resource(context)
        partition = context.partition_key if context.has_partition_key else None
        folder = self.folder(resource, context.instance, partition)
        out_dir = self.attempt_dir(folder, 1)
        try:
            # Under the partition's lock: a submit reading these files never sees them half rewritten.
            with _partition_lock(folder):
                manifest = build_request_files(
                    source,
                    self.spec,
                    out_dir,
                    profile=resource.profile,
                    policy=self.policy,
                    attempt=1,
                    max_requests_per_shard=self.max_requests_per_shard,
                )
        except RequestValidationError as exc:
            raise dg.Failure(
                description=str(exc),
                metadata={"problems": dg.MetadataValue.json(exc.counts), "rows": exc.total_rows},
                allow_retries=False,
            ) from None
        fingerprints = [s.fingerprint(resource.provider, manifest.endpoint) for s in manifest.shards]
        metadata: dict[str, Any] = {
            "rows": manifest.rows,
            "requests": manifest.requests,
            "rejected_rows": len(manifest.rejected),
            "shards": len(manifest.shards),
            "bytes": sum(s.bytes for s in manifest.shards),
            "fingerprints": dg.MetadataValue.json(fingerprints),
            "manifest": dg.MetadataValue.path(str(out_dir / MANIFEST_NAME)),
            "preview": dg.MetadataValue.json(_first_requests(manifest, 3)),
            "dagster/row_count": manifest.requests,
        }
        if manifest.rejected:
            metadata["rejected"] = dg.MetadataValue.md(
                _markdown(
                    pd.DataFrame(
                        [{"row": r.row, "key": r.key, "reasons": ", ".join(r.reasons), "message": r.message} for r in manifest.rejected[:_PREVIEW_ROWS]]
                    )
                )
            )
        return dg.MaterializeResult(metadata=metadata)

    # ---- <name>_batch -------------------------------------------------------------------------
    def submit_batches(self, context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        resource = self.resource(context)
        partition = context.partition_key if context.has_partition_key else None
        folder = self.folder(resource, context.instance, partition)
        manifest_path = self.attempt_dir(folder, 1) / MANIFEST_NAME
        with resource.get_provider() as provider, self.cancel_if_stopped(context, provider, partition) as watched:
            with _partition_lock(folder):  # the request files cannot change while they are read and sent
                if not manifest_path.exists():
                    raise dg.Failure(f"no request files at {manifest_path}: materialize {self.name}_requests for this partition first")
                manifest = RequestManifest.read(manifest_path)
                submitted = self.submit(context, resource, provider, manifest, partition, self.batch_key)
            batches = [batch for _, batch, _ in submitted]
            watched.extend(b.id for b in batches)
            if self.blocking:
                batches = self.wait(context, resource, provider, [b.id for b in batches])
            links = {b.id: url for b in batches if (url := provider.console_url(b.id))}
        records = [record for record, _, _ in submitted]
        metadata: dict[str, Any] = {
            BATCHES_KEY: batches_metadata(records),
            "batch_ids": dg.MetadataValue.json([r.batch_id for r in records]),
            "reattached": sum(1 for _, _, again in submitted if again),
            "submitted": sum(1 for _, _, again in submitted if not again),
            "statuses": dg.MetadataValue.json({b.id: str(b.status) for b in batches}),
            "requests": manifest.requests,
            "provider": resource.provider,
            "completion_window": resource.window,
        }
        if links:
            metadata["console"] = dg.MetadataValue.md("\n".join(f"- [{i}]({url})" for i, url in links.items()))
        return dg.MaterializeResult(metadata=metadata)

    def submit(
        self,
        context: dg.AssetExecutionContext,
        resource: BatchProviderResource,
        provider: BatchProvider,
        manifest: RequestManifest,
        partition: str | None,
        asset_key: dg.AssetKey,
        resubmit: Mapping[int, int] | None = None,
    ) -> list[tuple[SubmittedBatch, Batch, bool]]:
        """Submit each shard of ``manifest`` once: (record, batch, re-attached) per shard.

        Call it holding the partition's lock (:func:`_partition_lock`). The partition's batches are
        listed once at the provider; a shard whose fingerprint has a batch that did not fail
        validation re-attaches to it. ``resubmit`` (shard -> times refused for a full queue)
        limits the call to those shards, tagged with their count.
        """
        tag = partition if partition is not None else UNPARTITIONED
        tags = {PIPELINE_TAG: self.name, PARTITION_TAG: tag}
        since = self.first_built(context.instance, partition)
        known = _first_by_fingerprint(provider, tags, since) if manifest.shards else {}
        extra = self.batch_tags(partition, manifest.attempt) if callable(self.batch_tags) else (self.batch_tags or {})
        out: list[tuple[SubmittedBatch, Batch, bool]] = []
        created: list[tuple[int, Batch]] = []
        for index in sorted(resubmit) if resubmit is not None else range(len(manifest.shards)):
            shard = manifest.shards[index]
            fingerprint = shard.fingerprint(resource.provider, manifest.endpoint)
            batch = known.get(fingerprint)
            again = batch is not None
            if batch is None:
                metadata = {
                    **extra,
                    **tags,
                    _FINGERPRINT_TAG: fingerprint,
                    "bp_asset": asset_key.to_user_string(),
                    _RUN_TAG: context.run.run_id,
                    "bp_attempt": str(manifest.attempt),
                    "bp_shard": str(index),
                    **({RESUBMIT_TAG: str(resubmit[index])} if resubmit else {}),
                }
                batch = provider.submit(shard.path, endpoint=manifest.endpoint, completion_window=resource.window, metadata=metadata)
                context.log.info(f"submitted {shard.path.name} ({shard.rows} requests) as batch {batch.id}")
                created.append((len(out), batch))
            else:
                context.log.info(f"{shard.path.name} is already batch {batch.id} ({batch.status}): re-attached")
            out.append((SubmittedBatch(batch_id=batch.id, shard=index, fingerprint=fingerprint, attempt=manifest.attempt), batch, again))
        if created:
            self.keep_first(context, provider, tags, since, out, created)
        return out

    def first_built(self, instance: dg.DagsterInstance, partition: str | None) -> float | None:
        """When the partition's batches may have started: its first requests (or batch) materialization.

        No batch of the partition can be older: a submit needs the request files. The provider's
        clock may run behind Dagster's, hence the margin. None (list everything) when the event log
        holds neither, e.g. after the assets were wiped.
        """
        started = []
        for key in (self.requests_key, self.batch_key):
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(key, asset_partitions=[partition] if partition is not None else None), limit=1, ascending=True
            ).records
            started += [r.timestamp for r in records]
        return min(started) - CLOCK_SKEW_SECONDS if started else None

    def keep_first(
        self,
        context: dg.AssetExecutionContext,
        provider: BatchProvider,
        tags: Mapping[str, str],
        since: float | None,
        out: list[tuple[SubmittedBatch, Batch, bool]],
        created: Sequence[tuple[int, Batch]],
    ) -> None:
        """The last resort against a duplicate: another submitter that the lock did not cover.

        The partition lock serializes the runs of one deployment. Runs that do not share it (two
        deployments, a storage_dir not shared by every run worker) may both find no batch and both
        create one. Listing again after creating shows both; every submitter keeps the oldest
        live batch of a fingerprint (the last one listed) and cancels its own if it is not that
        one. The loser may have started: this bounds the damage, the lock prevents it.
        """
        live = _first_by_fingerprint(provider, tags, since)
        for position, mine in created:
            record, _, _ = out[position]
            first = live.get(record.fingerprint)
            if first is None or first.id == mine.id:
                continue
            context.log.warning(
                f"batch {mine.id} duplicates batch {first.id} created for the same shard by another submitter: "
                f"cancelling {mine.id}, keeping {first.id}"
            )
            try:
                provider.cancel_batch(mine.id)
            except Exception as exc:  # noqa: BLE001 - already finished: it stays a duplicate, reported above
                context.log.warning(f"could not cancel duplicate batch {mine.id}: {exc}")
            out[position] = (record.model_copy(update={"batch_id": first.id}), first, True)

    def wait(
        self, context: dg.AssetExecutionContext, resource: BatchProviderResource, provider: BatchProvider, batch_ids: Sequence[str]
    ) -> list[Batch]:
        """Blocking mode: poll until every batch is terminal."""
        latest: dict[str, Batch] = {}
        started = time.monotonic()
        while True:
            open_ids = [i for i in batch_ids if i not in latest or not latest[i].is_terminal]
            polled = poll_batches(provider, open_ids, max_workers=resource.max_concurrent_polls, deadline=time.monotonic() + 60)
            for batch_id, answer in polled.items():
                if isinstance(answer, Exception):
                    context.log.warning(f"polling batch {batch_id} failed: {answer}")
                else:
                    latest[batch_id] = answer
            if all(i in latest and latest[i].is_terminal for i in batch_ids):
                return [latest[i] for i in batch_ids]
            time.sleep(resource.poll_delay(time.monotonic() - started))

    @contextmanager
    def cancel_if_stopped(
        self, context: dg.AssetExecutionContext, provider: BatchProvider, partition: str | None
    ) -> Iterator[list[str]]:
        """Blocking mode: cancel this run's batches if the run is terminated while they run.

        Yields a list to add the ids of batches the run waits for; batches this run created are
        also found by their run-id tag (one accepted just before the interrupt never returned its
        id). A run that fails otherwise leaves its batches alone: running it again re-attaches.
        """
        watched: list[str] = []
        if not (self.blocking and self.cancel_on_termination):
            yield watched
            return
        try:
            yield watched
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
            tag = partition if partition is not None else UNPARTITIONED
            ids = set(watched)
            try:
                tags = {PIPELINE_TAG: self.name, PARTITION_TAG: tag, _RUN_TAG: context.run.run_id}
                since = self.first_built(context.instance, partition)
                ids.update(b.id for b in provider.find_batches(tags, created_after=since) if not b.is_terminal)
            except Exception as exc:  # noqa: BLE001 - best effort while the run stops
                context.log.error(f"run stopped: could not list this run's batches: {exc}")
            for batch_id in sorted(ids):
                try:
                    provider.cancel_batch(batch_id)
                    context.log.warning(f"run stopped: cancelled batch {batch_id}")
                except Exception as exc:  # noqa: BLE001 - a terminal batch cannot be cancelled: fine
                    context.log.info(f"run stopped: batch {batch_id} not cancelled: {exc}")
            raise

    # ---- <name>_results -----------------------------------------------------------------------
    def collect_results(self, context: dg.AssetExecutionContext, source: pd.DataFrame) -> Iterator[Any]:
        """Join the round's batches; submit a retry and stop (blocking mode: wait) or output the table."""
        if self.results_key not in context.selected_asset_keys:
            raise dg.Failure(f"the checks of {self.name}_results are evaluated when it is materialized: materialize it")
        resource = self.resource(context)
        partition = context.partition_key if context.has_partition_key else None
        folder = self.folder(resource, context.instance, partition)
        current = load_round(context.instance, self.batch_key, self.results_key, partition)
        if current is None:
            raise dg.Failure(f"no batches recorded for this partition: materialize {self.name}_batch first")
        first = RequestManifest.read(self.attempt_dir(folder, 1) / MANIFEST_NAME)
        if first.rows != len(source):
            raise dg.Failure(
                f"the source has {len(source)} rows but the request files were built from {first.rows}: "
                f"the source changed since; materialize {self.name}_requests and {self.name}_batch again"
            )
        ids = _results.manifest_custom_ids(first, source.index)
        with resource.get_provider() as provider, self.cancel_if_stopped(context, provider, partition) as watched:
            while True:
                watched[:] = [b.batch_id for b in current.batches]
                batches = self.terminal_batches(context, resource, provider, current)
                refused = _refused(current, batches, resource.max_resubmits)
                if refused and not current.cancelled:
                    current = self.resubmit(context, resource, provider, folder, partition, current, refused)
                    if not self.blocking:
                        return  # the sensor tracks the new batches and launches this asset again
                    continue
                joined = [
                    self.join_attempt(context, resource, provider, source, ids, folder, current, batches, attempt)
                    for attempt in range(1, current.attempt + 1)
                ]
                frames = [frame for frame, _ in joined]
                frame = frames[0] if len(frames) == 1 else _results.merge_attempts(frames)
                anomalies = _all_anomalies([found for _, found in joined])
                summary = _results.summarize(frame, profile=resource.profile, prices=resource.prices(), anomalies=anomalies)
                plan = _results.plan_retry(frame, retry_invalid_output=self.retry_invalid_output, max_attempts=self.max_attempts)
                if plan.empty or current.cancelled:
                    break
                with _partition_lock(folder):
                    retry = _results.build_retry_requests(
                        plan, source, ids, self.spec, self.attempt_dir(folder, plan.attempt), profile=resource.profile, policy=self.policy
                    )
                    submitted = self.submit(context, resource, provider, retry, partition, self.results_key)
                records = [record for record, _, _ in submitted]
                context.log_event(
                    dg.AssetObservation(
                        asset_key=self.results_key,
                        partition=partition,
                        metadata={
                            **control_metadata("retry", current.storage_id, records),
                            "attempt": plan.attempt,
                            "retried_rows": len(plan.custom_ids),
                            "retry_reasons": dg.MetadataValue.json(plan.retry_reasons),
                            **summary.to_metadata(),
                        },
                    )
                )
                context.log.info(f"sending {len(plan.custom_ids)} rows again as attempt {plan.attempt}: {plan.retry_reasons}")
                current = Round(current.partition, current.storage_id, current.batches + tuple(records), current.cancelled)
                if not self.blocking:
                    return  # the sensor tracks the retry and launches this asset again when it is done

        metadata: dict[str, Any] = {
            **summary.to_metadata(),
            "attempts": current.attempt,
            "batch_ids": dg.MetadataValue.json([b.batch_id for b in current.batches]),
            "not_retried": dg.MetadataValue.json(plan.kept_reasons),
            "preview": dg.MetadataValue.md(_markdown(_preview(frame))),
            "dagster/row_count": len(frame),
        }
        yield dg.Output(frame, metadata=metadata)
        yield from evaluate_checks(
            frame,
            results_key=self.results_key,
            source_rows=len(source),
            summary=summary,
            threshold=self.failure_rate_threshold,
            structured=self.spec.output_model is not None,
        )

    def join_attempt(
        self,
        context: dg.AssetExecutionContext,
        resource: BatchProviderResource,
        provider: BatchProvider,
        source: pd.DataFrame,
        ids: pd.Series,
        folder: Path,
        current: Round,
        batches: Mapping[str, Batch],
        attempt: int,
    ) -> tuple[pd.DataFrame, _results.ResultAnomalies]:
        """The rows sent in ``attempt``, joined to that attempt's result files, and the lines that did not join."""
        manifest = RequestManifest.read(self.attempt_dir(folder, attempt) / MANIFEST_NAME)
        # A shard submitted again after a full queue: its latest batch is the one that ran.
        by_shard = {b.shard: batches[b.batch_id] for b in current.batches if b.attempt == attempt}
        files = [self.download(context, resource, provider, batch, folder / "downloads") for batch in by_shard.values()]
        sent = manifest.read_ids()
        if attempt == 1:  # built from the whole source: every row was sent or rejected
            rows = pd.Series(True, index=ids.index)
        else:
            rows = ids.isin(set(sent["custom_id"]) | {r.custom_id for r in manifest.rejected})
        joined = _results.join_results(
            source[rows],
            ids[rows],
            files,
            endpoint=manifest.endpoint,
            output_model=self.spec.output_model,
            rejected=manifest.rejected,
            attempt=attempt,
        )
        if not joined.anomalies.clean:
            found = joined.anomalies
            context.log.warning(
                f"attempt {attempt}: result lines not joined to a row: {found.corrupt_lines} corrupt, "
                f"{found.duplicate_lines} duplicates (e.g. {found.duplicate_examples[:3]}), "
                f"{found.unknown_lines} with an unknown custom_id (e.g. {found.unknown_examples[:3]})"
            )
        return _explain_unfinished(joined.frame, sent, by_shard), joined.anomalies

    def resubmit(
        self,
        context: dg.AssetExecutionContext,
        resource: BatchProviderResource,
        provider: BatchProvider,
        folder: Path,
        partition: str | None,
        current: Round,
        refused: Mapping[tuple[int, int], int],
    ) -> Round:
        """Submit again the shards whose batch the provider refused for a full queue; the round with them.

        ``refused`` maps (attempt, shard) to how many times it was refused. Their rows keep their
        attempt number: nothing of them ran. Blocking mode waits the delay here; otherwise the
        sensor held this run back by as much. Recorded as a retry observation the sensor follows.
        """
        if self.blocking:
            time.sleep(resource.resubmit_delay(max(refused.values())))
        records: list[SubmittedBatch] = []
        with _partition_lock(folder):
            for attempt in sorted({a for a, _ in refused}):
                manifest = RequestManifest.read(self.attempt_dir(folder, attempt) / MANIFEST_NAME)
                shards = {shard: count for (a, shard), count in refused.items() if a == attempt}
                submitted = self.submit(context, resource, provider, manifest, partition, self.results_key, resubmit=shards)
                records += [record for record, _, _ in submitted]
        context.log.warning(
            f"the provider's queue was full (token_limit_exceeded) for {len(records)} shards: submitted them again "
            f"as {[r.batch_id for r in records]}"
        )
        context.log_event(
            dg.AssetObservation(
                asset_key=self.results_key,
                partition=partition,
                metadata={**control_metadata("retry", current.storage_id, records), "resubmitted": len(records)},
            )
        )
        return Round(current.partition, current.storage_id, current.batches + tuple(records), current.cancelled)

    def terminal_batches(
        self, context: dg.AssetExecutionContext, resource: BatchProviderResource, provider: BatchProvider, current: Round
    ) -> dict[str, Batch]:
        """Every batch of the round, once all are terminal (waiting for them in blocking mode)."""
        ids = [b.batch_id for b in current.batches]
        if self.blocking:
            return {b.id: b for b in self.wait(context, resource, provider, ids)}
        polled = poll_batches(provider, ids, max_workers=resource.max_concurrent_polls, deadline=time.monotonic() + 300)
        problems = {i: a for i, a in polled.items() if isinstance(a, Exception)}
        if problems or len(polled) != len(ids):
            unanswered = sorted(set(ids) - set(polled))
            raise dg.Failure(f"could not retrieve batches {unanswered + sorted(problems)}: {list(problems.values())[:3]}")
        running = [b for b in polled.values() if isinstance(b, Batch) and not b.is_terminal]
        if running:
            listed = ", ".join(f"{b.id} ({b.status})" for b in running)
            raise dg.Failure(f"batches still running: {listed}; the sensor launches this asset when they are done")
        return {i: b for i, b in polled.items() if isinstance(b, Batch)}

    def download(
        self, context: dg.AssetExecutionContext, resource: BatchProviderResource, provider: BatchProvider, batch: Batch, folder: Path
    ) -> ResultFiles:
        """A terminal batch's files, from the local cache or the provider (deleted there if configured)."""
        paths: dict[str, Path | None] = {}
        for kind, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
            path = folder / f"{batch.id}.{kind}.jsonl"
            if file_id and not path.exists():
                provider.download_file(file_id, path)
            paths[kind] = path if file_id else None
        if resource.delete_files:
            deleted = provider.delete_batch_files(batch)
            context.log.debug(f"deleted files {deleted} of batch {batch.id} at the provider")
        return ResultFiles(batch_id=batch.id, output_path=paths["output"], error_path=paths["errors"])

    # ---- <name>_cancel ------------------------------------------------------------------------
    def cancel(self, context: dg.OpExecutionContext, partitions: Sequence[str]) -> None:
        resource = self.resource(context)
        wanted = list(partitions) or [UNPARTITIONED]
        for partition in wanted:
            cancelled = resource.cancel_partitions(self.name, [partition])
            context.log.info(f"{self.name} {partition}: cancelled {len(cancelled)} batches {[b.id for b in cancelled]}")
            key = None if partition == UNPARTITIONED else partition
            current = load_round(context.instance, self.batch_key, self.results_key, key)
            if current is not None:
                context.log_event(
                    dg.AssetObservation(
                        asset_key=self.results_key,
                        partition=key,
                        metadata={**control_metadata("cancel", current.storage_id), "cancelled": len(cancelled)},
                    )
                )


_FINGERPRINT_TAG = "bp_fingerprint"
_RUN_TAG = "bp_run_id"


@contextmanager
def _partition_lock(folder: Path) -> Iterator[None]:
    """One submitter at a time for a partition: an advisory lock on ``<folder>/submit.lock``.

    Held while the partition's batches are listed and the missing ones created, so two runs of the
    same partition (a retried run and a backfill, two clicks) never both create a batch for one
    shard: the second lists after the first created, and re-attaches. Held too while the request
    files are written, so a submit never reads them half rewritten. Every run worker of a
    deployment shares the storage directory (see ``BatchProviderResource.storage_dir``), so the
    lock covers one Dagster deployment; the OS frees it if its holder dies. Beyond it,
    :meth:`_Pipeline.keep_first` reconciles after the fact.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "submit.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _first_by_fingerprint(provider: BatchProvider, tags: Mapping[str, str], since: float | None) -> dict[str, Batch]:
    """The oldest batch of each fingerprint among those ``tags`` find, leaving out batches that failed validation.

    The oldest, because a fingerprint with several batches (submitters the partition lock did
    not cover) keeps its first: every submitter agrees on it (see :meth:`_Pipeline.keep_first`).
    A batch that failed validation ran nothing: its shard may go again.
    """
    first: dict[str, Batch] = {}
    for batch in provider.find_batches(tags, created_after=since):  # newest first: the oldest comes last and stays
        fingerprint = batch.metadata.get(_FINGERPRINT_TAG)
        if fingerprint and batch.status != BatchStatus.FAILED:
            first[fingerprint] = batch
    return first


def _first_requests(manifest: RequestManifest, count: int) -> list[Any]:
    """The first request lines of the first shard, for the asset page (long strings cut short)."""
    lines: list[Any] = []
    if manifest.shards:
        with manifest.shards[0].path.open("rb") as fh:
            for line in fh:
                lines.append(_shorten(orjson.loads(line)))
                if len(lines) >= count:
                    break
    return lines


def _shorten(value: Any, width: int = 300) -> Any:
    """``value`` with every string over ``width`` characters cut (a base64 image stays out of metadata)."""
    if isinstance(value, str):
        return value if len(value) <= width else f"{value[:width]}... ({len(value)} chars)"
    if isinstance(value, dict):
        return {k: _shorten(v, width) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, width) for v in value]
    return value


def _markdown(frame: pd.DataFrame, width: int = 80) -> str:
    """A small DataFrame as a markdown table (cells cut to ``width`` characters)."""

    def cell(value: Any) -> str:
        text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _preview(frame: pd.DataFrame) -> pd.DataFrame:
    """The first rows of a results table with the columns a reader looks at first."""
    wanted = ["custom_id", "outcome", *[c for c in frame.columns if c.startswith(_results.OUTPUT_PREFIX)], "content", "error_code", "attempt"]
    return frame[[c for c in dict.fromkeys(wanted) if c in frame.columns]].head(_PREVIEW_ROWS)


def _refused(current: Round, batches: Mapping[str, Batch], max_resubmits: int) -> dict[tuple[int, int], int]:
    """(attempt, shard) -> refusals so far, for shards whose latest batch was refused for a full queue and may go again."""
    latest: dict[tuple[int, int], SubmittedBatch] = {}
    tries: Counter[tuple[int, int]] = Counter()
    for record in current.batches:
        latest[record.attempt, record.shard] = record
        tries[record.attempt, record.shard] += 1
    return {
        key: tries[key]
        for key, record in latest.items()
        if batches[record.batch_id].resubmit_later and tries[key] <= max_resubmits
    }


def _all_anomalies(found: Sequence[_results.ResultAnomalies]) -> _results.ResultAnomalies:
    """The result lines of every attempt that could not be joined, counted together."""
    if len(found) == 1:
        return found[0]
    return _results.ResultAnomalies(
        lines_read=sum(a.lines_read for a in found),
        unknown_lines=sum(a.unknown_lines for a in found),
        unknown_examples=[e for a in found for e in a.unknown_examples][:20],
        duplicate_ids=sum(a.duplicate_ids for a in found),
        duplicate_lines=sum(a.duplicate_lines for a in found),
        duplicate_examples=[e for a in found for e in a.duplicate_examples][:20],
        corrupt_lines=sum(a.corrupt_lines for a in found),
        corrupt_examples=[e for a in found for e in a.corrupt_examples][:20],
    )


def _explain_unfinished(frame: pd.DataFrame, sent: pd.DataFrame, by_shard: Mapping[int, Batch]) -> pd.DataFrame:
    """Rows without a line whose batch ended cancelled, expired or failed take their batch's fate.

    A batch cancelled while validating, or failing validation, writes no file at all: its rows
    are not "missing" (lost by the provider) but cancelled, expired or failed with its error.
    """
    unfinished = {shard: b for shard, b in by_shard.items() if b.status != BatchStatus.COMPLETED}
    missing = frame["outcome"] == "missing"
    if not unfinished or not missing.any():
        return frame
    frame = frame.copy()
    shard_of = frame["custom_id"].map(dict(zip(sent["custom_id"], sent["shard"])))
    for shard, batch in unfinished.items():
        rows = missing & (shard_of == shard)
        if batch.status == BatchStatus.FAILED:
            error = batch.errors[0] if batch.errors else None
            fate = ("failed", (error and error.code) or "batch_failed", (error and error.message) or "the batch failed")
        elif batch.status == BatchStatus.EXPIRED:
            fate = ("expired", "batch_expired", "the batch expired before this request ran")
        else:
            fate = ("cancelled", "batch_cancelled", "the batch was cancelled before this request ran")
        frame.loc[rows, "outcome"] = fate[0]
        frame.loc[rows, "error_code"] = fate[1]
        frame.loc[rows, "error_message"] = fate[2]
        frame.loc[rows, "batch_id"] = batch.id
    return frame
