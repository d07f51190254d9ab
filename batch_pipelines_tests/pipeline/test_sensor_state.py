"""What the sensor keeps between ticks: a cursor that stays small however many batches are in
flight, and the batches' state in the instance, right across lost ticks, resets and pipelines.

Dagster stores the cursor with every tick record, skipped ticks included; a cursor that grew with
the batches in flight (about 270 bytes each before) made a week of ticks gigabytes.
"""

import json
from pathlib import Path

import dagster as dg

from batch_pipelines import make_provider
from batch_pipelines.local_service import FaultPlan
from batch_pipelines.pipeline.ledger import BATCHES_KEY, batches_metadata
from batch_pipelines.pipeline.sensor_state import SensorState
from batch_pipelines.submission import SubmittedBatch
from batch_pipelines_tests.pipeline.test_sensor import create_batches, record
from batch_pipelines_tests.support.driver import DAYS, RUN_KEY_TAG
from batch_pipelines_tests.support.instances import on_every_storage
from batch_pipelines_tests.support.service import LocalService, service_batches
from batch_pipelines_tests.support.waiting import wait_until

#: The issue's bound at 100 batches in flight.
MAX_CURSOR_BYTES = 8 * 1024


def running_batches(service: LocalService, count: int, tmp_path: Path) -> list[str]:
    """``count`` batches that stay in flight (an hour a row) for the length of the test."""
    service.set_faults(FaultPlan(row_delay=3600))
    path = tmp_path / "two.jsonl"  # the first row runs at once, the second an hour later
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}} for i in range(2)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with make_provider("openai", api_key=service.api_key, base_url=service.base_url) as provider:
        uploaded = provider.upload_file(path)
        ids = [provider.create_batch(uploaded.id, endpoint="/v1/chat/completions").id for _ in range(count)]
    return ids


def record_rounds(instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str], ids: list[str]) -> None:
    """One submission per partition, its share of ``ids``, as ``<name>_batch`` records it."""
    share = len(ids) // len(partitions)
    for n, partition in enumerate(partitions):
        mine = ids[n * share : (n + 1) * share]
        records = [SubmittedBatch(batch_id=b, shard=i, fingerprint=f"fp{i}", attempt=1) for i, b in enumerate(mine)]
        instance.report_runless_asset_event(
            dg.AssetObservation(asset_key=key, partition=partition, metadata={BATCHES_KEY: batches_metadata(records)})
        )


# SQLite only: its 1,000 batches take a minute; the other tests here hold the batches' state in
# PostgreSQL's key-value table too.
def test_the_cursor_stays_small_with_100_and_1000_batches_in_flight(harness, service, tmp_path):
    h = harness(rows=1, resource={"max_concurrent_polls": 8}, sensor_tick_budget_seconds=600.0)
    days = DAYS.get_partition_keys()[:100]
    ids = running_batches(service, 1000, tmp_path)

    record_rounds(h.instance, h.pipeline.batch_asset.key, days, ids[:100])
    sizes = []
    for _ in range(2):  # the tick that reads the rounds and polls them all, and one more
        tick = h.tick()
        in_flight = tick.asset_events[-1].metadata["batches_in_flight"].value if tick.asset_events else None
        sizes.append(len(h.cursor.encode()))
    assert in_flight in (None, 100) and not h.requested
    print(f"stored cursor at 100 batches in flight: {max(sizes)} bytes")
    assert max(sizes) <= MAX_CURSOR_BYTES

    # Ten times as many: 900 more batches over the same 100 days' new rounds and 900 other days.
    more = DAYS.get_partition_keys()[100:1000]
    record_rounds(h.instance, h.pipeline.batch_asset.key, more, ids[100:])
    tick = h.tick()
    assert tick.asset_events[-1].metadata["batches_in_flight"].value == 1000
    print(f"stored cursor at 1000 batches in flight: {len(h.cursor.encode())} bytes")
    assert len(h.cursor.encode()) <= MAX_CURSOR_BYTES
    # The batches live in the instance instead, each polled, and the next tick reads them back.
    assert sorted(b.id for g in h.tracked() for b in g.batches) == sorted(ids)
    assert all(b.polled_at and b.status != "validating" for g in h.tracked() for b in g.batches)
    assert not h.tick().run_requests and not h.requested


def _finished(tick) -> list[str | None]:
    return [e.partition for e in tick.asset_events if isinstance(e, dg.AssetMaterialization)]


@on_every_storage
def test_a_tick_the_daemon_died_in_is_reported_again_and_its_run_launched_once(harness, service):
    h = harness(rows=1)
    h.tick()  # a first stored tick: nothing in flight yet
    day = DAYS.get_partition_keys()[0]
    h.submit([day])
    wait_until(lambda: all(b["status"] == "completed" for b in service_batches(service)))

    lost = h.evaluate()  # polls the ended batch, writes its state, and is never stored
    assert [r.partition_key for r in lost.run_requests] == [day] and _finished(lost) == [day]

    # The next tick from the stored cursor: what the lost one polled is kept, what it reported is made again.
    again = h.tick(launch=True)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in lost.run_requests]
    assert _finished(again) == [day]
    assert any(e.partition == day and "progress" in e.metadata for e in again.asset_events)
    # That tick was stored: the day is handed off and dropped; nothing runs or is reported twice.
    later = h.tick(launch=True)
    assert not later.run_requests and not later.asset_events
    assert SensorState.load(h.instance, h.pipeline.batch_asset.key).groups == {}
    assert len(h.instance.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: lost.run_requests[0].run_key}))) == 1
    assert h.materialized_results() == {day}


@on_every_storage
def test_a_cursor_reset_reads_the_log_again_and_runs_nothing_twice(harness, service, tmp_path):
    h = harness(rows=1)
    days = DAYS.get_partition_keys()[:2]
    h.submit(days[:1])
    h.drive(days[:1])
    [running] = running_batches(service, 1, tmp_path)
    record(h.instance, h.pipeline.batch_asset.key, days[1], [running])
    h.tick()
    assert [g.partition for g in h.tracked()] == [days[1]]
    runs = len(h.requested)

    h.cursor = None  # "Reset cursor" in the UI
    tick = h.tick(launch=True)

    assert not tick.run_requests and not _finished(tick) and len(h.requested) == runs  # the finished day is not run again
    [group] = h.tracked()  # the day in flight is tracked again, from its submission
    assert group.partition == days[1] and [b.id for b in group.batches] == [running]


@on_every_storage
def test_two_pipelines_keep_their_batches_apart(harness, service, tmp_path):
    one, other = harness(rows=1), harness(rows=1, name="other")
    assert one.instance is other.instance
    day = DAYS.get_partition_keys()[0]
    mine, theirs = create_batches(service, 1, tmp_path)[0], running_batches(service, 1, tmp_path)[0]
    record(one.instance, one.pipeline.batch_asset.key, day, [mine])
    record(other.instance, other.pipeline.batch_asset.key, day, [theirs])

    assert [r.partition_key for r in one.tick().run_requests] == [day]
    assert not other.tick().run_requests

    one.tick()
    assert one.tracked() == [] and SensorState.load(one.instance, one.pipeline.batch_asset.key).groups == {}
    assert [[b.id for b in g.batches] for g in other.tracked()] == [[theirs]]


@on_every_storage
def test_a_cursor_from_before_moves_its_batches_into_the_instance(harness, service, tmp_path):
    h = harness(rows=1)
    day = DAYS.get_partition_keys()[0]
    [batch_id] = create_batches(service, 1, tmp_path)
    record(h.instance, h.pipeline.batch_asset.key, day, [batch_id])
    [submission] = h.instance.fetch_observations(h.pipeline.batch_asset.key, limit=1).records
    # What the sensor stored before: the storage id read up to, and the batches in flight in the cursor.
    group = {"partition": day, "round": submission.storage_id, "attempt": 1, "batches": [{"id": batch_id, "seen_at": 1.0}]}
    h.cursor = json.dumps({"after_batch": submission.storage_id, "groups": [group]})

    tick = h.tick()

    assert [r.partition_key for r in tick.run_requests] == [day] and _finished(tick) == [day]
    assert "groups" not in json.loads(h.cursor)
