"""Runs over several partitions: a backfill run submits many, the sensor joins many in one request;
each partition keeps its own batches, metadata and checks."""

import os
import time

import dagster as dg
import pandas as pd

from batch_pipelines.pipeline import FAILURE_RATE_CHECK, OUTPUT_VALID_CHECK, ROWS_CHECK
from batch_pipelines.pipeline.run_partitions import contiguous_ranges
from batch_pipelines_tests.support.driver import DAYS, range_tags
from batch_pipelines_tests.support.service import service_batches
from batch_pipelines_tests.support.waiting import wait_for_batch

FIVE = DAYS.get_partition_keys()[:5]


def test_one_run_submits_five_partitions_and_one_request_joins_them(harness, service):
    h = harness(rows=3)
    for day in FIVE:
        h.run([h.texts], day)
    runs_before = len(h.instance.get_runs())

    submit = h.run([h.pipeline.requests_asset, h.pipeline.batch_asset], None, tags=range_tags(FIVE))

    # One run, one batch per partition, each tagged with its partition.
    assert len(h.instance.get_runs()) == runs_before + 1
    batches = service_batches(service)
    assert sorted(b["metadata"]["bp_partition"] for b in batches) == FIVE
    for day in FIVE:
        built = h.latest_metadata(h.pipeline.requests_asset, day)
        assert built["rows"] == 3 and built["preview"][0]["custom_id"] == f"{day}-000"
        assert h.submission(day)["submitted"] == 1
    materialized = [e.event_specific_data.materialization for e in submit.get_asset_materialization_events()]
    # The requests asset once per partition; the batch asset waits for its batches to end.
    assert sorted(m.partition for m in materialized if m.asset_key == h.pipeline.requests_asset.key) == FIVE
    assert not [m for m in materialized if m.asset_key == h.pipeline.batch_asset.key]
    for batch in batches:
        wait_for_batch(service.engine, batch["id"])

    tick = h.tick()

    [request] = tick.run_requests  # five partitions done in the same tick: one results run
    assert h.partitions_of(request) == FIVE
    joined = h.execute(request)
    # Each partition materialized once by that one run (no range-wide materialization besides).
    results_events = [e.event_specific_data.materialization for e in joined.get_asset_materialization_events()]
    assert sorted(m.partition for m in results_events if m.asset_key == h.pipeline.results_asset.key) == FIVE
    assert h.materialized_results() == set(FIVE)
    for day in FIVE:
        frame = h.results(day)
        assert frame["text_id"].tolist() == [f"{day}-{i:03d}" for i in range(3)]  # every row once
        assert set(frame["outcome"]) == {"succeeded"}
        meta = h.latest_metadata(h.pipeline.results_asset, day)
        assert meta["dagster/row_count"] == 3 and meta["succeeded"] == 3
        assert meta["batch_ids"] == h.submission(day)["batch_ids"]
    # Three checks per partition, each on that partition's materialization.
    evaluations = joined.get_asset_check_evaluations()
    assert sorted((e.metadata["partition"].value, e.check_name) for e in evaluations) == sorted(
        (day, check) for day in FIVE for check in (ROWS_CHECK, FAILURE_RATE_CHECK, OUTPUT_VALID_CHECK)
    )
    assert all(e.passed for e in evaluations)
    storage_ids = {
        day: h.instance.fetch_materializations(dg.AssetRecordsFilter(h.pipeline.results_asset.key, asset_partitions=[day]), limit=1)
        .records[0]
        .storage_id
        for day in FIVE
    }
    assert all(e.target_materialization_data.storage_id == storage_ids[e.metadata["partition"].value] for e in evaluations)
    # Nothing is asked twice.
    assert not h.tick().run_requests


def test_bad_rows_in_one_partition_fail_the_run_before_any_partition_is_written_the_others_go_alone(harness, service, tmp_path):
    three, bad_day = FIVE[:3], FIVE[2]

    def blank_one_text(frame: pd.DataFrame) -> pd.DataFrame:
        if frame["text_id"][0].startswith(bad_day):
            frame.loc[1, "text"] = None
        return frame

    h = harness(rows=3, edit=blank_one_text)
    for day in three:
        h.run([h.texts], day)

    result = h.materialize([h.pipeline.requests_asset, h.pipeline.batch_asset], None, raise_on_error=False, tags=range_tags(three))

    assert not result.success
    message = result.failure_data_for_node("classify_requests").error.message
    assert f"partition {bad_day}" in message and f"row 1 (key '{bad_day}-001'): 'text' is missing" in message
    assert "1 of 3 partitions" in message
    # None of the run's partitions was written or submitted.
    assert service_batches(service) == []
    assert not list((tmp_path / "storage").rglob("manifest.json"))
    assert not h.instance.get_materialized_partitions(h.pipeline.requests_asset.key)

    # The good partitions alone go through; a results run over them and the bad one joins them
    # and fails naming the one it could not join.
    good = FIVE[:2]
    h.run([h.pipeline.requests_asset, h.pipeline.batch_asset], None, tags=range_tags(good))
    for batch in service_batches(service):
        wait_for_batch(service.engine, batch["id"])
    joined = h.materialize([h.pipeline.results_asset], None, raise_on_error=False, tags=range_tags(three))

    assert not joined.success
    failure = joined.failure_data_for_node("classify_results").error.message
    assert "1 of 3 partitions were not joined" in failure and f"partition {bad_day}: no batches recorded" in failure
    assert h.materialized_results() == set(good)
    assert all(len(h.results(day)) == 3 for day in good)
    assert sorted(e.metadata["partition"].value for e in joined.get_asset_check_evaluations()) == sorted(good * 3)


def test_finished_partitions_are_cut_into_ranges_of_neighbours():
    days = DAYS.get_partition_keys()[:12]
    done = [*days[0:7], days[8], days[10], days[11], "gone"]  # days[7] and days[9] still running; "gone" deleted since

    ranges = contiguous_ranges(days, reversed(done), most=3)

    assert ranges == [days[0:3], days[3:6], [days[6]], [days[8]], days[10:12], ["gone"]]


def test_a_run_over_several_partitions_cleans_up_old_files_at_its_end(harness, service, tmp_path):
    h = harness(rows=3)
    three = FIVE[:3]
    for day in three:
        h.run([h.texts], day)
    h.run([h.pipeline.requests_asset, h.pipeline.batch_asset], None, tags=range_tags(three))
    for batch in service_batches(service):
        wait_for_batch(service.engine, batch["id"])
    # A partition done with long ago: its files older than storage_retention_days (30).
    old = tmp_path / "storage" / h.pipeline.name / "2023-01-01"
    for name in ("attempt-1/manifest.json", "attempt-2/manifest.json", "attempt-3/manifest.json", "downloads/batch_old.output.jsonl"):
        (old / name).parent.mkdir(parents=True, exist_ok=True)
        (old / name).write_text("{}")
    month_ago = time.time() - 31 * 86400
    for path in old.rglob("*"):
        os.utime(path, (month_ago, month_ago))

    joined = h.materialize([h.pipeline.results_asset], None, tags=range_tags(three))

    assert joined.success and h.materialized_results() == set(three)
    # The old partition's middle attempt and downloads went; its first and newest attempts stay.
    kept = sorted(p.relative_to(old).as_posix() for p in old.rglob("*") if p.is_file())
    assert kept == ["attempt-1/manifest.json", "attempt-3/manifest.json"]
    for day in three:  # the run's own partitions are recent: left whole
        assert (tmp_path / "storage" / h.pipeline.name / day / "attempt-1" / "manifest.json").exists()
        assert list((tmp_path / "storage" / h.pipeline.name / day / "downloads").iterdir())
