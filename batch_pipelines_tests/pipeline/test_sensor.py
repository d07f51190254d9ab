"""The sensor alone: event-log reading, time budget, failure isolation, cursor."""

import json
import uuid
from pathlib import Path

import dagster as dg
from dagster._core.events import AssetObservationData, DagsterEvent, DagsterEventType

from batch_pipelines import make_provider
from batch_pipelines.local_service import FaultPlan, HttpFault
from batch_pipelines.pipeline.ledger import BATCHES_KEY, RESULTS_BATCH_IDS_KEY, SOURCE_DIGEST_KEY, batches_metadata
from batch_pipelines.submission import SubmittedBatch
from batch_pipelines_tests.support.driver import DAYS, Harness, range_tags
from batch_pipelines_tests.support.instances import on_every_storage
from batch_pipelines_tests.support.service import LocalService
from batch_pipelines_tests.support.waiting import wait_for_batch, wait_until

pytestmark = on_every_storage

_UNKNOWN = "batch_" + "0" * 24


def create_batches(service: LocalService, count: int, tmp_path: Path) -> list[str]:
    path = tmp_path / "one.jsonl"
    line = {"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}
    path.write_text(json.dumps(line) + "\n")
    with make_provider("openai", api_key=service.api_key, base_url=service.base_url) as provider:
        uploaded = provider.upload_file(path)
        ids = [provider.create_batch(uploaded.id, endpoint="/v1/chat/completions").id for _ in range(count)]
    for batch_id in ids:
        wait_for_batch(service.engine, batch_id)
    return ids


def record(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str, batch_ids: list[str]) -> None:
    """What ``<name>_batch`` records: its batches, in the submission observation's metadata."""
    records = [SubmittedBatch(batch_id=b, shard=i, fingerprint=f"fp{i}", attempt=1) for i, b in enumerate(batch_ids)]
    instance.report_runless_asset_event(
        dg.AssetObservation(asset_key=key, partition=partition, metadata={BATCHES_KEY: batches_metadata(records)})
    )


def submit_run(instance: dg.DagsterInstance, partitions: list[str], status: dg.DagsterRunStatus) -> str:
    """A run over ``partitions`` in the instance, as a backfill makes one; its id."""
    run = dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=status, tags=range_tags(partitions))
    return instance.add_run(run).run_id


def record_in_run(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey, partition: str, batch_ids: list[str]) -> None:
    """What ``<name>_batch`` records in the run ``run_id`` that submits ``partition``."""
    records = [SubmittedBatch(batch_id=b, shard=i, fingerprint=f"fp{i}", attempt=1) for i, b in enumerate(batch_ids)]
    observation = dg.AssetObservation(asset_key=key, partition=partition, metadata={BATCHES_KEY: batches_metadata(records)})
    event = DagsterEvent(DagsterEventType.ASSET_OBSERVATION.value, job_name="__ASSET_JOB", event_specific_data=AssetObservationData(observation))
    instance.report_dagster_event(event, run_id=run_id)


def polled(h: Harness) -> dict[str, float]:
    return {b.id: b.polled_at for g in h.tracked() for b in g.batches}


def test_budget_carries_batches_over_and_a_failing_batch_does_not_stop_the_others(harness, service, tmp_path):
    h = harness(rows=1, sensor_tick_budget_seconds=2.0, resource={"max_concurrent_polls": 2})
    days = DAYS.get_partition_keys()[:6]
    ids = create_batches(service, 6, tmp_path)
    for day, batch_id in zip(days[:5], ids):
        record(h.instance, h.pipeline.batch_asset.key, day, [batch_id])
    record(h.instance, h.pipeline.batch_asset.key, days[5], [ids[5], _UNKNOWN])  # one batch the provider never heard of
    # Every retrieve now takes 0.5 s: two at a time, a 2 s budget polls at most six of seven.
    service.set_faults(FaultPlan(http_faults=(HttpFault(route="/v1/batches/batch_*", method="GET", status=None, times=None, delay=0.5),)))

    h.tick()
    after_first = polled(h)
    done_first = {i for i, t in after_first.items() if t}
    assert 0 < len(done_first) < 7
    h.tick()
    after_second = polled(h)
    # The least recently polled go first: the second tick started with those the first left.
    carried = set(after_first) - done_first
    assert carried & {i for i, t in after_second.items() if t}

    for _ in range(20):
        if len(h.requested_partitions()) >= 5:
            break
        h.tick()
    assert h.requested_partitions() == days[:5]
    [stuck] = h.tracked()
    assert stuck.partition == days[5]
    assert {b.id: b.errors > 0 for b in stuck.batches} == {ids[5]: False, _UNKNOWN: True}


def test_a_new_materialization_supersedes_the_partition_round(harness, service, tmp_path):
    h = harness(rows=1)
    old, new = create_batches(service, 2, tmp_path)
    record(h.instance, h.pipeline.batch_asset.key, DAYS.get_partition_keys()[0], [_UNKNOWN])
    h.tick()
    record(h.instance, h.pipeline.batch_asset.key, DAYS.get_partition_keys()[0], [old, new])

    tick = h.tick()

    [request] = tick.run_requests
    assert request.partition_key == DAYS.get_partition_keys()[0]
    assert h.tracked() == []
    # Progress was recorded for the partition; its batches ended: the batch asset is materialized.
    progress, done, in_flight = tick.asset_events
    assert progress.partition == done.partition == DAYS.get_partition_keys()[0] and in_flight.partition is None
    assert isinstance(done, dg.AssetMaterialization) and done.metadata["batches"].value == 2
    assert progress.metadata["progress"].value == "2 of 2 requests done (100%), 0 failed"
    assert in_flight.metadata["batches_in_flight"].value == 0


def test_partitions_done_together_share_a_run_request_which_a_lost_tick_asks_again_as_it_was(harness, service, tmp_path):
    h = harness(rows=1)
    days = DAYS.get_partition_keys()[:3]
    ids = create_batches(service, 3, tmp_path)
    h.tick()  # a stored cursor, nothing in flight yet
    for day, batch_id in zip(days[:2], ids):
        record(h.instance, h.pipeline.batch_asset.key, day, [batch_id])

    lost = h.evaluate()  # the daemon dies in this tick: its cursor, events and runs are never stored ...
    [asked] = lost.run_requests
    assert h.partitions_of(asked) == days[:2]  # two partitions done together: one run request
    record(h.instance, h.pipeline.batch_asset.key, days[2], [ids[2]])  # ... and a neighbour finishes meanwhile

    made_again = h.tick().run_requests

    # The same run again (same key: launched once), not another range; the neighbour in a run of its own.
    assert [r.run_key for r in made_again if r.run_key == asked.run_key] == [asked.run_key]
    assert sorted(p for r in made_again for p in h.partitions_of(r)) == days
    assert len(made_again) == 2


def test_partitions_done_while_their_run_still_submits_wait_for_it_and_share_one_run(harness, service, tmp_path):
    h = harness(rows=1)
    days = DAYS.get_partition_keys()[:4]
    ids = create_batches(service, 4, tmp_path)
    run_id = submit_run(h.instance, days, dg.DagsterRunStatus.STARTED)
    for day, batch_id in zip(days[:3], ids):
        record_in_run(h.instance, run_id, h.pipeline.batch_asset.key, day, [batch_id])

    early = h.tick()

    # Three days' batches ended, but their run is still submitting the fourth: no results run yet.
    assert not early.run_requests
    assert {g.partition for g in h.tracked()} == set(days[:3])
    record_in_run(h.instance, run_id, h.pipeline.batch_asset.key, days[3], [ids[3]])
    h.instance.report_run_failed(h.instance.get_run_by_id(run_id))  # it ends (here: failing after its last submit)

    [request] = h.tick().run_requests

    assert h.partitions_of(request) == days  # the four days in one run
    assert not h.tracked()


def test_a_partition_waits_for_a_run_sibling_in_flight_only_up_to_results_gather_seconds(harness, service, tmp_path):
    h = harness(rows=1, results_gather_seconds=0.5)
    days = DAYS.get_partition_keys()[:3]
    ids = create_batches(service, 2, tmp_path)
    run_id = submit_run(h.instance, days, dg.DagsterRunStatus.SUCCESS)
    for day, batch_ids in zip(days, [[ids[0]], [ids[1]], [_UNKNOWN]]):  # the third never ends
        record_in_run(h.instance, run_id, h.pipeline.batch_asset.key, day, batch_ids)

    assert not h.tick().run_requests  # two days done, their sibling in flight: they wait ...

    wait_until(lambda: h.tick().run_requests, interval=0.1)

    # ... until results_gather_seconds have passed: then they go, together, without it.
    assert h.requested_partitions() == days[:2] and len(h.requested) == 1
    assert [g.partition for g in h.tracked()] == [days[2]]


def test_a_lost_tick_made_again_after_its_run_joined_some_partitions_asks_for_no_other_run(harness, service, tmp_path):
    h = harness(rows=1)
    days = DAYS.get_partition_keys()[:3]
    ids = create_batches(service, 3, tmp_path)
    h.tick()
    for day, batch_id in zip(days, ids):
        record(h.instance, h.pipeline.batch_asset.key, day, [batch_id])
    [asked] = h.evaluate().run_requests  # the daemon launches this run, then dies before the tick is stored
    assert h.partitions_of(asked) == days
    # The run has joined the first day when the next daemon makes the tick again.
    for key, metadata in [(h.pipeline.requests_asset.key, {}), (h.pipeline.results_asset.key, {RESULTS_BATCH_IDS_KEY: dg.MetadataValue.json([ids[0]])})]:
        h.instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=days[0], metadata={SOURCE_DIGEST_KEY: "d", **metadata}))

    made_again = h.tick().run_requests

    # The days left are asked under that run's key (launched already: nothing more), not in a run of their own.
    assert [r.run_key for r in made_again] == [asked.run_key]
