"""``<name>_results``: join a round's batches back to the source rows, or send what failed again.

Downloads every batch's files, joins each attempt to the rows it sent (one outcome per row) and,
while retryable rows remain and attempts are left, submits them again as a follow-up batch
(recorded as an observation; the sensor tracks it) instead of materializing. A shard the provider
refused because its token queue was full (``token_limit_exceeded``) is submitted again the same
way, after a delay, without spending an attempt of its rows. The final materialization is the
whole table, every row once, with counts, tokens, cost and checks; then the pipeline's stored
files older than ``storage_retention_days`` are deleted (:mod:`batch_pipelines.storage.retention`):
this partition's round is over, other partitions' files only when none is recent. A run over
several partitions joins each on its own (:mod:`batch_pipelines.pipeline.run_partitions`) and
cleans up once, at its end (one listing of the storage per run, not one per partition).
"""

import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa

from batch_pipelines import results as _results
from batch_pipelines.pipeline.checks import evaluate_checks
from batch_pipelines.pipeline.ledger import RESULTS_BATCH_IDS_KEY, SOURCE_DIGEST_KEY, SUBMITTED_COST_KEY, Round, control_metadata, load_round
from batch_pipelines.pipeline.metadata import column_schema, results_preview, summary_metadata, usd
from batch_pipelines.pipeline.resource import BatchProviderResource
from batch_pipelines.pipeline.run_partitions import load_source, partition_check_evaluations, run_partitions, write_partition
from batch_pipelines.pipeline.runtime import PipelineRuntime
from batch_pipelines.providers import Batch, BatchProvider, ResultFiles, poll_batches
from batch_pipelines.requests import RequestManifest, RequestValidationError, frame_digest
from batch_pipelines.storage import Cleanup, Storage, WorkingCopy, clean_up
from batch_pipelines.submission import REUSE_FOLDER, PartitionFolder, SubmittedBatch, partition_dir

__all__ = ["Joined", "collect_results", "join_partition"]

#: Seconds a results run may spend retrieving its round's batches.
_RETRIEVE_SECONDS = 300


@dataclass(frozen=True)
class Joined:
    """One partition's final table: what its materialization holds and its checks say."""

    frame: pd.DataFrame
    metadata: dict[str, Any]
    checks: list[dg.AssetCheckResult]


def collect_results(rt: PipelineRuntime, context: dg.AssetExecutionContext, output_name: str) -> Iterator[Any]:
    """Each partition of the run joined: its table output (or, in a run over several partitions,
    stored and recorded per partition) with its checks; or a retry submitted, and no table yet.

    In a run over several partitions one that cannot be joined yet (batches still running, a
    source changed since) does not hold back the others: they are materialized, then the run
    fails naming the partitions that were not.
    """
    if rt.results_key not in context.selected_asset_keys:
        raise dg.Failure(f"the checks of {rt.name}_results are evaluated when it is materialized: materialize it")
    partitions = run_partitions(context)
    if len(partitions) == 1:
        joined = join_partition(rt, context, partitions[0], load_source(context, rt.source_key, partitions[0]))
        if joined is not None:
            yield dg.Output(joined.frame, metadata=joined.metadata)
            yield from joined.checks
        return
    if rt.options.blocking:
        raise dg.Failure(f"{rt.name} runs in blocking mode: one partition per run, not {len(partitions)}")
    failed: dict[str, str] = {}
    for partition in partitions:
        assert partition is not None  # a range is of partitions
        try:
            joined = join_partition(rt, context, partition, load_source(context, rt.source_key, partition), clean=False)
        except Exception as exc:  # noqa: BLE001 - reported with the partition, after the others were joined
            failed[partition] = getattr(exc, "description", None) or f"{type(exc).__name__}: {exc}"
            context.log.error(f"{rt.name} {partition}: not joined: {failed[partition]}")
            continue
        if joined is None:
            continue  # a retry went out: the sensor launches this partition again when it is done
        stored = write_partition(
            context, io_manager_key=rt.options.io_manager_key, key=rt.results_key, output_name=output_name, partition=partition, frame=joined.frame
        )
        yield dg.AssetMaterialization(asset_key=rt.results_key, partition=partition, metadata={**stored, **joined.metadata})
        yield from partition_check_evaluations(context, rt.results_key, partition, joined.checks)
    # Not under any partition's lock: what it deletes is old in partitions with no recent file.
    _clean_up(rt, context, rt.resource(context).storage(context.instance))
    if failed:
        details = "\n".join(f"partition {p}: {why}" for p, why in failed.items())
        raise dg.Failure(
            description=f"{len(failed)} of {len(partitions)} partitions were not joined (the others were):\n{details}",
            metadata={"not_joined": dg.MetadataValue.json(sorted(failed))},
        )


def join_partition(
    rt: PipelineRuntime, context: dg.AssetExecutionContext, partition: str | None, source: pd.DataFrame, *, clean: bool = True
) -> Joined | None:
    """Join one partition's round; submit a retry and return None (blocking mode: wait), or its final table.

    With ``clean`` the stored files past the retention are deleted once it is joined (the
    partition's own old attempts too), and its metadata says what went.
    """
    resource = rt.resource(context)
    current = load_round(context.instance, rt.batch_key, rt.results_key, partition)
    if current is None:
        raise dg.Failure(f"no batches recorded for this partition: materialize {rt.name}_batch first")
    with rt.files(context, resource) as copy:
        return _collect(rt, context, resource, copy, source, partition, current, clean=clean)


def _collect(
    rt: PipelineRuntime,
    context: dg.AssetExecutionContext,
    resource: BatchProviderResource,
    copy: WorkingCopy,
    source: pd.DataFrame,
    partition: str | None,
    current: Round,
    *,
    clean: bool,
) -> Joined | None:
    folder = rt.folder(copy, partition)
    first = rt.manifest(copy, folder, 1)
    if first.rows != len(source):
        raise dg.Failure(
            f"the source has {len(source)} rows but the request files were built from {first.rows}: "
            f"the source changed since; materialize {rt.name}_requests and {rt.name}_batch again"
        )
    ids = _results.manifest_custom_ids(first, source.index)
    try:
        current_fingerprints = _results.current_fingerprints(
            source, rt.spec, first, profile=resource.profile, policy=rt.options.policy,
            max_requests_per_shard=rt.options.max_requests_per_shard,
        )  # fmt: skip
    except RequestValidationError as exc:
        raise dg.Failure(description=f"the source no longer makes valid requests: {exc}", allow_retries=False) from None
    store = rt.reuse_store(copy)
    # The store's answers, read once per results run and only if a row was held back.
    known = functools.cache(lambda: rt.known_answers(copy, store)) if store is not None else (lambda: None)
    blocking = rt.options.blocking
    with resource.get_provider() as provider, rt.watching(context, provider, partition) as watched:
        while True:
            watched[:] = [b.batch_id for b in current.batches]
            batches = _terminal_batches(rt, context, resource, provider, current)
            refused = _refused(current, batches, resource.max_resubmits)
            if refused and not current.cancelled:
                current = _resubmit(rt, context, resource, provider, copy, folder, partition, current, refused)
                if not blocking:
                    return None  # the sensor tracks the new batches and launches this asset again
                continue
            joined = [
                _join_attempt(context, resource, provider, rt, source, ids, current_fingerprints, known, first, copy, folder, current, batches, attempt)
                for attempt in range(1, current.attempt + 1)
            ]
            frames = [frame for frame, _ in joined]
            frame = frames[0] if len(frames) == 1 else _results.merge_attempts(frames)
            anomalies = _results.ResultAnomalies.combined([found for _, found in joined])
            summary = _results.summarize(frame, profile=resource.profile, prices=resource.prices(rt.spec.model), anomalies=anomalies)
            plan = _results.plan_retry(
                frame,
                retry_invalid_output=rt.options.retry_invalid_output,
                retry_stale=rt.options.on_stale == "resend",
                max_attempts=rt.options.max_attempts,
            )
            if plan.empty or current.cancelled:
                break
            submitter = rt.submitter(context, resource, provider, partition)
            with rt.lock(context, partition):
                retry = _results.build_retry_requests(
                    plan, source, ids, rt.spec, folder.attempt(plan.attempt), profile=resource.profile, policy=rt.options.policy,
                    send_once=rt.send_once(context, copy),
                )  # fmt: skip
                copy.push(folder.attempt(plan.attempt), exact=True)
                retry_cost = rt.budget(resource).check(context, retry, spent=summary.cost_usd or 0.0)
                records = [s.record for s in submitter.submit(retry, asset=rt.results_key.to_user_string())]
            context.log_event(
                dg.AssetObservation(
                    asset_key=rt.results_key,
                    partition=partition,
                    metadata={
                        **control_metadata("retry", current.storage_id, records),
                        "attempt": plan.attempt,
                        "retried_rows": len(plan.custom_ids),
                        **({SUBMITTED_COST_KEY: usd(retry_cost)} if retry_cost is not None else {}),
                        "retry_reasons": dg.MetadataValue.json(plan.retry_reasons),
                        **summary_metadata(summary),
                    },
                )
            )
            context.log.info(f"sending {len(plan.custom_ids)} rows again as attempt {plan.attempt}: {plan.retry_reasons}")
            current = current.plus(records)
            if not blocking:
                return None  # the sensor tracks the retry and launches this asset again when it is done

    if store is not None:
        rt.record_answers(copy, store, _results.fresh_answers(frame, _results.answer_columns(frame, source.columns)))
    metadata: dict[str, Any] = {
        **summary_metadata(summary),
        "attempts": current.attempt,
        RESULTS_BATCH_IDS_KEY: dg.MetadataValue.json([b.batch_id for b in current.batches]),
        "not_retried": dg.MetadataValue.json(plan.kept_reasons),
        "preview": results_preview(frame),
        "dagster/row_count": len(frame),
        "dagster/column_schema": column_schema(frame),
        SOURCE_DIGEST_KEY: frame_digest(source) or "",
    }
    if clean:
        cleanup = _clean_up(rt, context, copy.storage, settled=[partition])
        metadata["storage_cleanup"] = dg.MetadataValue.json(
            {"files_deleted": cleanup.files, "bytes_deleted": cleanup.bytes, "partitions": cleanup.partitions}
        )
    checks = evaluate_checks(
        frame,
        results_key=rt.results_key,
        source_rows=len(source),
        summary=summary,
        threshold=rt.options.failure_rate_threshold,
        structured=rt.spec.output_model is not None,
    )
    return Joined(frame, metadata, checks)


def _join_attempt(
    context: dg.AssetExecutionContext,
    resource: BatchProviderResource,
    provider: BatchProvider,
    rt: PipelineRuntime,
    source: pd.DataFrame,
    ids: pd.Series,
    fingerprints: pa.Array,
    known: Callable[[], _results.KnownAnswers | None],
    first: RequestManifest,
    copy: WorkingCopy,
    folder: PartitionFolder,
    current: Round,
    batches: Mapping[str, Batch],
    attempt: int,
) -> tuple[pd.DataFrame, _results.ResultAnomalies]:
    """The rows sent in ``attempt``, joined to that attempt's result files, and the lines that did not join.

    An answer stays only on a row whose content (``fingerprints``, the source's now) is what was sent.
    """
    manifest = first if attempt == 1 else rt.manifest(copy, folder, attempt)
    # A shard submitted again after a full queue: its latest batch is the one that ran.
    by_shard = {b.shard: batches[b.batch_id] for b in current.batches if b.attempt == attempt}
    # What an earlier run downloaded is not downloaded again (nor is it still at the provider, if deleted there).
    copy.pull(folder.downloads, prefixes=[f"{batch.id}." for batch in by_shard.values()])
    files = [_download(context, resource, provider, batch, folder) for batch in by_shard.values()]
    copy.push(folder.downloads)
    joined = _results.join_attempt(
        source, ids, fingerprints, manifest, files,
        by_shard=by_shard,
        recorded={b.shard: b.fingerprint for b in current.batches if b.attempt == attempt},
        provider=resource.provider,
        known=known,
        output_model=rt.spec.output_model,
    )  # fmt: skip
    if not joined.anomalies.clean:
        found = joined.anomalies
        context.log.warning(
            f"attempt {attempt}: result lines not joined to a row: {found.corrupt_lines} corrupt, "
            f"{found.duplicate_lines} duplicates (e.g. {found.duplicate_examples[:3]}), "
            f"{found.unknown_lines} with an unknown custom_id (e.g. {found.unknown_examples[:3]})"
        )
    return joined.frame, joined.anomalies


def _clean_up(rt: PipelineRuntime, context: dg.AssetExecutionContext, storage: Storage, *, settled: Sequence[str | None] = ()) -> Cleanup:
    """Delete the pipeline's stored files past the retention; logged.

    ``settled``: at most one partition whose round just ended, under its lock: its own old
    attempts go even though its newest files are recent.
    """
    with rt.lock(context, settled[0]) if settled else contextlib.nullcontext():
        cleanup = clean_up(
            storage, rt.name, retention_days=rt.options.storage_retention_days,
            settled={partition_dir(p) for p in settled}, not_partitions={REUSE_FOLDER},
        )  # fmt: skip
    if cleanup.files:
        context.log.info(
            f"storage clean-up: deleted {cleanup.files} files ({cleanup.bytes} bytes) older than "
            f"{rt.options.storage_retention_days:g} days in {cleanup.partitions} partition folders"
        )
    return cleanup


def _download(
    context: dg.AssetExecutionContext, resource: BatchProviderResource, provider: BatchProvider, batch: Batch, folder: PartitionFolder
) -> ResultFiles:
    """A terminal batch's files (from the partition's downloads when already there); deleted at the provider if configured."""
    files = provider.download_results(batch, folder.downloads)
    if resource.delete_files:
        deleted = provider.delete_batch_files(batch)
        context.log.debug(f"deleted files {deleted} of batch {batch.id} at the provider")
    return files


def _resubmit(
    rt: PipelineRuntime,
    context: dg.AssetExecutionContext,
    resource: BatchProviderResource,
    provider: BatchProvider,
    copy: WorkingCopy,
    folder: PartitionFolder,
    partition: str | None,
    current: Round,
    refused: Mapping[tuple[int, int], int],
) -> Round:
    """Submit again the shards whose batch the provider refused for a full queue; the round with them.

    ``refused`` maps (attempt, shard) to how many times it was refused. Their rows keep their
    attempt number: nothing of them ran. Blocking mode waits the delay here; otherwise the
    sensor held this run back by as much. Recorded as a retry observation the sensor follows.
    """
    if rt.options.blocking:
        time.sleep(resource.resubmit_delay(max(refused.values())))
    submitter = rt.submitter(context, resource, provider, partition)
    records: list[SubmittedBatch] = []
    with rt.lock(context, partition):
        for attempt in sorted({a for a, _ in refused}):
            shards = {shard: count for (a, shard), count in refused.items() if a == attempt}
            submitted = submitter.submit(rt.manifest(copy, folder, attempt, shards=True), asset=rt.results_key.to_user_string(), resubmit=shards)
            records += [s.record for s in submitted]
    context.log.warning(
        f"the provider's queue was full (token_limit_exceeded) for {len(records)} shards: submitted them again "
        f"as {[r.batch_id for r in records]}"
    )
    context.log_event(
        dg.AssetObservation(
            asset_key=rt.results_key,
            partition=partition,
            metadata={**control_metadata("retry", current.storage_id, records), "resubmitted": len(records)},
        )
    )
    return current.plus(records)


def _terminal_batches(
    rt: PipelineRuntime, context: dg.AssetExecutionContext, resource: BatchProviderResource, provider: BatchProvider, current: Round
) -> dict[str, Batch]:
    """Every batch of the round, once all are terminal (waiting for them in blocking mode)."""
    ids = [b.batch_id for b in current.batches]
    if rt.options.blocking:
        return {b.id: b for b in rt.wait(context, resource, provider, ids)}
    polled = poll_batches(provider, ids, max_workers=resource.max_concurrent_polls, deadline=time.monotonic() + _RETRIEVE_SECONDS)
    problems = {i: a for i, a in polled.items() if isinstance(a, Exception)}
    if problems or len(polled) != len(ids):
        unanswered = sorted(set(ids) - set(polled))
        raise dg.Failure(f"could not retrieve batches {unanswered + sorted(problems)}: {list(problems.values())[:3]}")
    running = [b for b in polled.values() if isinstance(b, Batch) and not b.is_terminal]
    if running:
        listed = ", ".join(f"{b.id} ({b.status})" for b in running)
        raise dg.Failure(f"batches still running: {listed}; the sensor launches this asset when they are done")
    return {i: b for i, b in polled.items() if isinstance(b, Batch)}


def _refused(current: Round, batches: Mapping[str, Batch], max_resubmits: int) -> dict[tuple[int, int], int]:
    """(attempt, shard) -> refusals so far, for shards whose latest batch was refused for a full queue and may go again."""
    latest: dict[tuple[int, int], SubmittedBatch] = {}
    tries: Counter[tuple[int, int]] = Counter()
    for record in current.batches:
        latest[record.attempt, record.shard] = record
        tries[record.attempt, record.shard] += 1
    return {key: tries[key] for key, record in latest.items() if batches[record.batch_id].resubmit_later and tries[key] <= max_resubmits}
