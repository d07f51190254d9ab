"""The polling sensor: every in-flight batch of a pipeline, polled until it is terminal.

Batches take hours, so no run waits for them. The sensor reads the rounds the ledger records
(:mod:`batch_pipelines.pipeline.ledger`) from the storage ids kept in its cursor, so a tick costs
two bounded event-log queries however many partitions are in flight (and one that hands off
finished partitions three pages more, however many). It tracks the batches of
each round's latest attempt in the instance's key-value store, not in its cursor
(:mod:`batch_pipelines.pipeline.sensor_state`: the cursor stays under a hundred bytes), polls
the due ones concurrently within a time budget (least recently polled first, the rest carried to
the next tick), records progress as observations on ``<name>_batch``
(:mod:`batch_pipelines.pipeline.progress`), and when every batch of the attempt is terminal
materializes ``<name>_batch`` (once per round) and requests ``<name>_results`` for it, unless
the partition's results were joined from these batches already (a re-attached round, a first
tick over an old history). Partitions done in the same tick share runs over ranges of
partitions (:mod:`batch_pipelines.pipeline.results_requests`), and a partition done before the
others its run submitted waits a while for them, so a burst of finished partitions costs a few
run requests, not one each. A batch whose poll fails stays in flight with
a growing delay; it never stops the others. A batch the provider refused because its token queue was full holds its
partition's results run back by the resource's ``resubmit_delay``: that run submits the shard
again, and the queue has had time to drain.
"""

import secrets
import time
from collections.abc import Sequence

import dagster as dg

from batch_pipelines.pipeline.ledger import (
    CONTROL_KEY,
    PAGE,
    ROUND_KEY,
    is_submission,
    latest_metadata,
    metadata_int,
    metadata_text,
    read_batches,
    results_cover,
    round_finished,
)
from batch_pipelines.pipeline.options import DEFAULT_OPTIONS
from batch_pipelines.pipeline.progress import ended_at, finished_metadata, in_flight_metadata, progress_metadata, started_at, usage_of
from batch_pipelines.pipeline.resource import BatchProviderResource
from batch_pipelines.pipeline.results_requests import results_run_requests, shares_runs, waiting_to_gather
from batch_pipelines.pipeline.sensor_state import Cursor, Group, SensorState, Tracked
from batch_pipelines.providers import TERMINAL_STATUSES, Batch, poll_batches
from batch_pipelines.submission import RESUBMIT_TAG, SubmittedBatch, partition_tag

__all__ = ["build_batch_sensor"]

def build_batch_sensor(
    *,
    name: str,
    requests_key: dg.AssetKey,
    batch_key: dg.AssetKey,
    results_key: dg.AssetKey,
    resource_key: str = DEFAULT_OPTIONS.resource_key,
    partitions_def: dg.PartitionsDefinition | None = None,
    max_partitions_per_run: int = DEFAULT_OPTIONS.max_partitions_per_run,
    gather_seconds: float = DEFAULT_OPTIONS.results_gather_seconds,
    minimum_interval_seconds: int = DEFAULT_OPTIONS.sensor_minimum_interval_seconds,
    tick_budget_seconds: float = DEFAULT_OPTIONS.sensor_tick_budget_seconds,
    default_status: dg.DefaultSensorStatus = DEFAULT_OPTIONS.sensor_default_status,
) -> dg.SensorDefinition:
    """The sensor ``<name>_sensor``: polls every in-flight batch of the pipeline ``name``.

    ``tick_budget_seconds`` bounds the time spent polling in one tick (keep it under the sensor
    timeout of your deployment, 60 s by default); batches not polled in time go first next tick.
    Partitions whose batches ended in the same tick share results runs: one per range of
    neighbouring partitions (in ``partitions_def``'s order) of at most ``max_partitions_per_run``;
    a partition done while others its run submitted are not (or the run is still submitting)
    waits up to ``gather_seconds`` for them.
    """
    if not shares_runs(partitions_def, max_partitions_per_run):
        gather_seconds = 0.0  # nothing to gather: every partition has a run of its own

    @dg.sensor(
        name=f"{name}_sensor",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        # A named job, so the results runs read "<name>_results_job" in the UI, not an anonymous one.
        job=dg.define_asset_job(f"{name}_results_job", selection=[results_key]),
        required_resource_keys={resource_key},
        description=f"Polls the batches of {name} and launches {results_key.to_user_string()} when a partition's batches are done.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        resource = getattr(context.resources, resource_key)
        started = time.monotonic()
        cursor = Cursor.load(context.cursor)
        # No cursor: a first tick, or a reset from the UI; either way the event log is read from the start.
        state = SensorState.load(context.instance, batch_key, fresh=context.cursor is None)
        for old in cursor.groups:  # a cursor written before the state moved out of it
            state.open(old)
        report_again = state.settle(cursor.tick)
        _read_new_rounds(context.instance, cursor, state, batch_key, results_key)
        groups = list(state.groups.values())

        now = time.time()
        tracked = {b.id: b for g in groups for b in g.batches if b.status not in TERMINAL_STATUSES}
        due = sorted((b for b in tracked.values() if b.due_at <= now), key=lambda b: b.polled_at)
        changed: set[str] = set()
        links: dict[str, str] = {}
        if due:
            with resource.get_provider() as provider:
                polled = poll_batches(
                    provider,
                    [b.id for b in due],
                    max_workers=resource.max_concurrent_polls,
                    deadline=started + tick_budget_seconds,
                )
                links = {i: url for i in tracked if (url := provider.console_url(i))}
            now = time.time()
            for batch_id, answer in polled.items():
                entry = tracked[batch_id]
                entry.polled_at = now
                if isinstance(answer, Exception):
                    entry.errors += 1
                    context.log.warning(f"polling batch {batch_id} failed ({entry.errors} in a row): {answer}")
                else:
                    entry.errors = 0
                    if _update(entry, answer):
                        changed.add(batch_id)
                    _hold_if_refused(context, resource, entry, answer, now)
                entry.due_at = now + resource.poll_delay(now - entry.seen_at, entry.errors)
            carried = len(due) - len(polled)
            if carried:
                context.log.info(f"{carried} of {len(due)} due batches not polled within {tick_budget_seconds}s; polled first next tick")

        # What this tick reports on a group waits, under this token, for a stored cursor to carry it.
        token = secrets.token_hex(6)
        events: list[dg.AssetObservation | dg.AssetMaterialization] = []
        ready: list[Group] = []
        for group in groups:
            if group.done and group.done_at is None:
                group.done_at = now
        waiting = waiting_to_gather(context.instance, groups, now=now, seconds=gather_seconds)
        released = any(g.done and not g.handed_off and g.partition not in waiting for g in groups)
        if gather_seconds and released and _read_new_rounds(context.instance, cursor, state, batch_key, results_key):
            # A run found finished above (its partitions released) may have recorded more rounds
            # since they were read: read now, after its end, they are all there; its partitions
            # wait for those (in flight).
            groups = list(state.groups.values())
            waiting |= waiting_to_gather(context.instance, groups, now=now, seconds=gather_seconds)

        def hands_off(group: Group) -> bool:  # done, not gathering, not held back
            held = max((b.hold_until for b in group.batches), default=0.0) > now
            return group.done and group.partition not in waiting and not held

        # What the ledger holds for the partitions handed off: a few pages, not queries per partition.
        leaving = [g.partition for g in groups if hands_off(g)]
        finished = latest_metadata(context.instance, batch_key, leaving) if leaving else {}
        joined = latest_metadata(context.instance, results_key, leaving) if leaving else {}
        built = latest_metadata(context.instance, requests_key, list(joined)) if joined else {}
        for group in groups:
            states = [b.state() for b in group.batches]
            mine = {b.id: links[b.id] for b in group.batches if b.id in links}
            if group.partition in report_again or any(b.id in changed for b in group.batches):
                events.append(
                    dg.AssetObservation(
                        asset_key=batch_key, partition=group.partition, metadata=progress_metadata(states, attempt=group.attempt, links=mine, now=now)
                    )
                )
                group.pending = token
            if not hands_off(group):
                continue
            if not round_finished(finished.get(group.partition), group.round):
                events.append(
                    dg.AssetMaterialization(
                        asset_key=batch_key, partition=group.partition, metadata=finished_metadata(states, round_id=group.round, links=mine)
                    )
                )
            ids = [b.id for b in group.batches]
            if results_cover(joined.get(group.partition), built.get(group.partition), ids):
                context.log.info(f"{partition_tag(group.partition)}: results already joined from batches {ids}; no results run")
            else:
                ready.append(group)
            group.pending, group.handed_off = token, True
        runs = results_run_requests(context.instance, name, results_key, ready, partitions_def, most=max_partitions_per_run)
        if changed or report_again:
            events.append(dg.AssetObservation(asset_key=batch_key, metadata=in_flight_metadata([[b.state() for b in g.batches] for g in groups])))
        state.save()
        if any(g.pending == token for g in groups):
            cursor.tick = token
        return dg.SensorResult(run_requests=runs, asset_events=events, cursor=cursor.dump())

    return _sensor


def _read_new_rounds(
    instance: dg.DagsterInstance, cursor: Cursor, state: SensorState, batch_key: dg.AssetKey, results_key: dg.AssetKey
) -> int:
    """Track the batches recorded since the cursor's storage ids (one page of each stream); how many records were read.

    A record read again (after a lost tick or a reset) leaves the partition's group as it is when
    that group is as new or newer.
    """
    now = time.time()
    observed = instance.fetch_observations(
        dg.AssetRecordsFilter(batch_key, after_storage_id=cursor.after_batch), limit=PAGE, ascending=True
    ).records
    for record in observed:
        cursor.after_batch = record.storage_id
        metadata = record.asset_observation.metadata  # type: ignore[union-attr]
        if not is_submission(metadata):
            continue  # progress this sensor observed
        # A new submission opens a new round: it supersedes the partition's older group.
        state.open(_group(record.partition_key, record.storage_id, 1, read_batches(metadata), now, record.run_id))

    controls = instance.fetch_observations(
        dg.AssetRecordsFilter(results_key, after_storage_id=cursor.after_control), limit=PAGE, ascending=True
    ).records
    for record in controls:
        cursor.after_control = record.storage_id
        metadata = record.asset_observation.metadata  # type: ignore[union-attr]
        round_id = metadata_int(metadata.get(ROUND_KEY))
        if metadata_text(metadata.get(CONTROL_KEY)) != "retry" or round_id is None:
            continue
        batches = read_batches(metadata)
        attempt = max((b.attempt for b in batches), default=1)
        # A retry (or resubmission) of the round: unless a newer round of the partition started since.
        state.open(_group(record.partition_key, round_id, attempt, batches, now, record.run_id))
    return len(observed) + len(controls)


def _group(partition: str | None, round_id: int, attempt: int, batches: Sequence[SubmittedBatch], now: float, run_id: str) -> Group:
    return Group(
        partition=partition,
        round=round_id,
        attempt=attempt,
        batches=[Tracked(id=b.batch_id, seen_at=now) for b in batches],
        run_id=run_id or None,  # a runless record (reported from outside a run) has ''
    )


def _update(entry: Tracked, batch: Batch) -> bool:
    """Copy a polled batch's state into its entry; whether anything changed."""
    before = (entry.status, entry.completed, entry.failed, entry.total)
    counts = batch.request_counts
    entry.status, entry.completed, entry.failed, entry.total = str(batch.status), counts.completed, counts.failed, counts.total
    entry.started_at = started_at(batch) or entry.started_at
    entry.ended_at = ended_at(batch)
    entry.model, entry.usage = batch.model or entry.model, usage_of(batch)
    return before != (entry.status, entry.completed, entry.failed, entry.total)


def _hold_if_refused(
    context: dg.SensorEvaluationContext, resource: BatchProviderResource, entry: Tracked, batch: Batch, now: float
) -> None:
    """A batch refused for a full queue, to be submitted again: wait a while before the results run does."""
    refusals = int(batch.metadata.get(RESUBMIT_TAG, "0")) + 1
    if batch.resubmit_later and refusals <= resource.max_resubmits:
        delay = resource.resubmit_delay(refusals)
        entry.hold_until = now + delay
        context.log.warning(f"batch {batch.id} refused: the provider's queue is full; its shard goes again in {delay:.0f}s")
