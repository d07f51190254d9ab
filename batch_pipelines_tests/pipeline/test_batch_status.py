"""Where each batch is, as Dagster shows it: in flight, done; and no results run that would change nothing."""

import dagster as dg

from batch_pipelines.local_service import FAULTS_METADATA_KEY, FaultPlan
from batch_pipelines_tests.support.driver import DAYS
from batch_pipelines_tests.support.instances import on_every_storage
from batch_pipelines_tests.support.service import service_batches
from batch_pipelines_tests.support.waiting import wait_until

pytestmark = on_every_storage

DAY = DAYS.get_partition_keys()[0]


def test_a_partition_in_flight_is_not_materialized_and_its_progress_is_observed(harness, service):
    # Rows one by one, slowly: the batch is seen in flight by a tick, however fast the machine.
    slow = FaultPlan(row_delay=0.5).to_json()
    h = harness(rows=6, batch_tags=lambda partition, attempt: {FAULTS_METADATA_KEY: slow})
    h.submit([DAY])

    # The submit run ended; the batch runs: the partition is not materialized, its submission is observed.
    assert DAY not in h.instance.get_materialized_partitions(h.pipeline.batch_asset.key)
    submitted = h.submission(DAY)
    [batch_id] = submitted["batch_ids"]
    assert submitted["status"] == "submitted" and submitted["submitted"] == 1

    def in_flight_progress() -> dict | None:
        tick = h.tick()
        for event in tick.asset_events:
            if event.partition == DAY and isinstance(event, dg.AssetObservation):
                meta = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
                if meta["status"] == "in_progress" and not meta["progress"].startswith("0 of"):
                    return meta
        return None

    meta = wait_until(in_flight_progress)
    assert meta["batch_ids"] == [batch_id] and meta["attempt"] == "1"
    assert " of 6 requests done (" in meta["progress"] and meta["percent_done"].endswith("%")
    assert meta["expected_finish"] > 0  # a rate is known once a request is done
    assert DAY not in h.instance.get_materialized_partitions(h.pipeline.batch_asset.key)
    # The tick also summed what is in flight, on the asset itself (the Events plots' line).
    summed = [e for e in h.instance.fetch_observations(h.pipeline.batch_asset.key, limit=50).records if e.partition_key is None]
    assert summed and summed[0].asset_observation.metadata["batches_in_flight"].value == 1

    h.drive([DAY])
    done = h.latest_metadata(h.pipeline.batch_asset, DAY)
    assert done["status"] == "completed" and done["completed"] == 6 and done["failed"] == 0
    assert done["statuses"] == {batch_id: "completed"} and done["duration_s"] >= 0
    results = h.latest_metadata(h.pipeline.results_asset, DAY)
    assert results["batch_ids"] == [batch_id]
    schema = {c.name: c.type for c in results["dagster/column_schema"].columns}
    assert schema["custom_id"] == "string" and schema["prompt_tokens"] == "int" and "output_category" in schema
    preview = results["preview"]
    assert len(preview.records) == 6 and preview.records[0].data["outcome"] == "succeeded"


def test_no_results_run_for_a_round_whose_results_are_joined_already(harness, service):
    h = harness(rows=4, reuse=False)
    h.submit([DAY])
    h.drive([DAY])
    runs = len(h.requested)
    assert runs == 1

    # A re-attach: the day submitted again finds its finished batch; nothing new to join.
    h.submit([DAY])
    assert h.submission(DAY)["reattached"] == 1 and len(service_batches(service)) == 1
    tick = h.tick()
    assert not tick.run_requests
    assert h.latest_metadata(h.pipeline.batch_asset, DAY)["status"] == "completed"

    # A daemon that lost its cursor (a restart from scratch, a reset): the history read again, no run.
    h.cursor = None
    tick = h.tick()
    assert not tick.run_requests and not h.tracked()
    assert not [e for e in tick.asset_events if isinstance(e, dg.AssetMaterialization)]  # each round materialized once
    assert len(h.requested) == runs


def test_results_materialized_by_hand_before_the_first_tick_are_not_run_again(harness, service):
    h = harness(rows=3, reuse=False)
    h.submit([DAY])
    wait_until(lambda: all(b["status"] == "completed" for b in service_batches(service)) or None)
    h.materialize([h.texts, h.pipeline.results_asset], DAY)  # by hand, from the UI, before the sensor ran
    assert DAY in h.materialized_results()

    tick = h.tick()  # the sensor's first tick in this project

    assert not tick.run_requests
    assert [e.partition for e in tick.asset_events if isinstance(e, dg.AssetMaterialization)] == [DAY]


def test_a_source_that_changed_is_joined_again_although_its_batch_is_the_same(harness, service):
    h = harness(rows=3, reuse=False)
    h.submit([DAY])
    h.drive([DAY])
    # A column the requests do not read changes: the same batch answers, the results must show the new column.
    edited = harness(rows=3, reuse=False, edit=lambda df: df.assign(label=df["text_id"] + "-relabelled"))
    edited.submit([DAY])
    assert edited.submission(DAY)["reattached"] == 1

    tick = edited.tick(launch=True)

    assert [r.partition_key for r in tick.run_requests] == [DAY]
    assert edited.results(DAY)["label"].str.endswith("-relabelled").all()

