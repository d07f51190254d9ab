"""The pipeline end to end on a real Dagster instance and the local service over HTTP."""

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from batch_pipelines.pipeline import FAILURE_RATE_CHECK, OUTPUT_VALID_CHECK, ROWS_CHECK
from batch_pipelines.local_service import FAULTS_METADATA_KEY, FaultPlan, HttpFault
from batch_pipelines.pipeline.partition_lock import PartitionLock, lock_key
from batch_pipelines_tests.support.child_runs import CRASH_EXIT, start_child
from batch_pipelines_tests.support.clients import capture_logs, requests_sent
from batch_pipelines_tests.support.driver import CATEGORIES, DAYS, in_progress_run
from batch_pipelines_tests.support.instances import on_every_storage
from batch_pipelines_tests.support.request_files import write_requests
from batch_pipelines_tests.support.service import LocalService, sent_per_custom_id, service_batches
from batch_pipelines_tests.support.waiting import TERMINAL, wait_until

DAYS3 = ["2024-01-01", "2024-01-02", "2024-01-03"]
DAY = DAYS3[0]


def run_child(mode: str, service: LocalService, storage: Path, instance: dg.DagsterInstance, **env: str) -> subprocess.Popen:
    return start_child(
        mode, service.base_url, storage, DAY, home=instance.root_directory, key=service.api_key or "",
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def faults_on_first_attempt(plan: FaultPlan) -> Any:
    """Batch tags putting ``plan`` on attempt 1 only: retries run clean."""
    return lambda partition, attempt: {FAULTS_METADATA_KEY: plan.to_json()} if attempt == 1 else {}


@on_every_storage
def test_three_partitions_every_row_once(harness, service):
    h = harness(rows=8)
    h.submit(DAYS3)
    assert len(service_batches(service)) == 3
    batch_meta = h.submission(DAY)
    assert batch_meta["submitted"] == 1 and batch_meta["reattached"] == 0
    assert batch_meta["provider"] == "openai" and batch_meta["completion_window"] == "24h"
    requests_meta = h.latest_metadata(h.pipeline.requests_asset, DAY)
    assert requests_meta["rows"] == 8 and requests_meta["shards"] == 1 and requests_meta["rejected_rows"] == 0
    assert requests_meta["preview"][0]["custom_id"] == f"{DAY}-000"
    assert service.api_key not in repr(h.resource)

    h.drive(DAYS3)

    assert h.requested_partitions() == DAYS3  # each day's results asked for once
    for day in DAYS3:
        frame = h.results(day)
        assert frame["text_id"].tolist() == [f"{day}-{i:03d}" for i in range(8)]
        assert frame["custom_id"].is_unique
        assert set(frame["outcome"]) == {"succeeded"}
        assert frame["output_category"].isin(CATEGORIES).all()
        meta = h.latest_metadata(h.pipeline.results_asset, day)
        assert meta["succeeded"] == 8 and meta["dagster/row_count"] == 8 and meta["attempts"] == 1
    assert all(checks_of(r) == {ROWS_CHECK: True, FAILURE_RATE_CHECK: True, OUTPUT_VALID_CHECK: True} for r in h.executed)
    # The batch asset was materialized by the sensor once each day's batch had ended, with its final status.
    for day in DAYS3:
        done = h.latest_metadata(h.pipeline.batch_asset, day)
        assert done["status"] == "completed" and done["completed"] == 8 and done["requests"] == 8
        assert done["batch_ids"] == h.submission(day)["batch_ids"]
    # On the way it observed the submission and the progress, per partition, and the sum of what was in flight.
    observed = h.instance.fetch_observations(h.pipeline.batch_asset.key, limit=100).records
    assert {r.partition_key for r in observed} == {*DAYS3, None}
    progress = [r.asset_observation.metadata for r in observed if r.partition_key and "progress" in r.asset_observation.metadata]
    assert progress and progress[0]["progress"].value == "8 of 8 requests done (100%), 0 failed"  # the latest first
    # The API key reached no run's event log (metadata, logs, errors) nor the sensor's cursor.
    for run in h.instance.get_runs():
        assert not [e for e in h.instance.all_logs(run.run_id) if service.api_key in str(e)]
    assert service.api_key not in h.cursor
    # Nothing left to do: later ticks request nothing; materializing the finished day again sends
    # no row (every answer is reused), and its results, joined from this very source, are not run again.
    assert not h.tick().run_requests
    h.submit([DAY])
    assert h.latest_metadata(h.pipeline.requests_asset, DAY)["rows_reused"] == 8
    assert h.submission(DAY)["submitted"] == 0
    assert len(service_batches(service)) == 3
    tick = h.tick(launch=True)  # a round of no batch is done at once
    assert not tick.run_requests and not h.tracked()
    assert h.latest_metadata(h.pipeline.batch_asset, DAY)["batches"] == 0


def test_backfill_of_twenty_partitions_is_polled_in_one_tick(harness, service):
    days = DAYS.get_partition_keys()[:20]
    h = harness(rows=2, max_partitions_per_run=5)
    h.submit(days)
    batches = service_batches(service)
    assert len(batches) == 20
    for batch in batches:
        wait_until(lambda: service.engine.get_batch(batch["id"])["status"] in TERMINAL)

    tick = h.tick()

    # Their results in four runs of five neighbouring days each (test_partition_ranges runs one).
    assert [h.partitions_of(r) for r in tick.run_requests] == [days[i : i + 5] for i in range(0, 20, 5)]
    materialized = [e for e in tick.asset_events if isinstance(e, dg.AssetMaterialization)]
    assert sorted(e.partition for e in materialized) == sorted(days)


@on_every_storage
def test_crash_after_accept_leaves_one_batch(harness, service, instance, tmp_path):
    h = harness(rows=8)
    h.materialize([h.texts, h.pipeline.requests_asset], DAY)

    child = run_child("crash", service, tmp_path / "storage", instance)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == CRASH_EXIT, stderr.decode()[-2000:]
    assert len(service_batches(service)) == 1  # the provider accepted it ...
    never = instance.fetch_materializations(dg.AssetRecordsFilter(h.pipeline.batch_asset.key), limit=1).records
    assert not never  # ... and Dagster never recorded it

    h.materialize([h.pipeline.batch_asset], DAY)

    batches = service_batches(service)
    assert len(batches) == 1
    meta = h.submission(DAY)
    assert meta["reattached"] == 1 and meta["batch_ids"] == [batches[0]["id"]]
    h.drive([DAY])
    assert set(h.results(DAY)["outcome"]) == {"succeeded"}


@pytest.mark.storages("postgres")  # SQLite's is the reliability scenario "two submits of one partition racing"
def test_two_run_workers_racing_to_submit_a_partition_make_one_batch(harness, service, instance, tmp_path):
    """Two processes submit one partition at once through the PostgreSQL instance they share."""
    h = harness(rows=8)
    h.materialize([h.texts, h.pipeline.requests_asset], DAY)
    # Lists are answered late, as they were when the call came: each racer misses the other's batch
    # unless mutual exclusion holds.
    slow_list = HttpFault(route="/v1/batches", method="GET", status=None, delay=1.5, after=True, times=2)
    service.set_faults(FaultPlan(http_faults=(slow_list,)))
    logs = [(tmp_path / f"racer-{n}.log").open("w") for n in range(2)]
    racers = [
        start_child("race", service.base_url, tmp_path / "storage", DAY, home=instance.root_directory, key=service.api_key or "",
                    text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        for log in logs
    ]  # fmt: skip
    try:
        assert [r.stdout.readline().strip() for r in racers] == ["ready", "ready"]  # loaded: then both at once
        for racer in racers:
            racer.stdin.write("go\n")
            racer.stdin.close()
        codes = [racer.wait(timeout=120) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
            racer.stdout.close()
        for log in logs:
            log.close()

    assert codes == [0, 0], [Path(log.name).read_text()[-2000:] for log in logs]
    [batch] = service_batches(service)
    submissions = [r.asset_observation.metadata for r in instance.fetch_observations(h.pipeline.batch_asset.key, limit=10).records]
    assert sorted(m["submitted"].value for m in submissions if "submitted" in m) == [0, 1]  # one created, one re-attached
    h.drive([DAY])
    assert len(h.results(DAY)) == 8 and set(h.results(DAY)["outcome"]) == {"succeeded"}


def test_retryable_failures_succeed_on_the_second_attempt(harness, service):
    h = harness(rows=40, batch_tags=faults_on_first_attempt(FaultPlan(row_failures={500: 0.1}, seed=3)))
    h.submit([DAY])

    h.drive([DAY])

    frame = h.results(DAY)
    assert len(frame) == 40 and frame["custom_id"].is_unique
    assert set(frame["outcome"]) == {"succeeded"}
    retried = frame[frame["attempt"] == 2]
    assert 0 < len(retried) < 40
    sent = sent_per_custom_id(service)
    assert max(sent.values()) == 2 and sum(sent.values()) == 40 + len(retried)
    assert {cid for cid, n in sent.items() if n == 2} == set(retried["custom_id"])
    assert [r.tags["batch_pipelines/attempt"] for r in h.requested] == ["1", "2"]
    meta = h.latest_metadata(h.pipeline.results_asset, DAY)
    assert meta["attempts"] == 2 and meta["succeeded"] == 40
    assert checks_of(h.executed[-1]) == {ROWS_CHECK: True, FAILURE_RATE_CHECK: True, OUTPUT_VALID_CHECK: True}
    # The first results run sent the retry instead of materializing a partial table.
    assert h.executed[0].get_asset_materialization_events() == []


def test_checks_fail_when_rows_fail_or_go_missing(harness, service):
    plan = FaultPlan(row_failures={400: 0.25}, missing_rows=2, seed=5)
    h = harness(rows=20, max_attempts=1, batch_tags=faults_on_first_attempt(plan))
    h.submit([DAY])

    h.drive([DAY])

    frame = h.results(DAY)
    counts = frame["outcome"].value_counts()
    assert len(frame) == 20 and counts["missing"] == 2 and counts["failed"] > 0
    assert checks_of(h.executed[-1]) == {ROWS_CHECK: False, FAILURE_RATE_CHECK: False, OUTPUT_VALID_CHECK: True}


def test_blocking_mode_polls_and_retries_inside_one_run(harness, service):
    h = harness(rows=30, blocking=True, batch_tags=faults_on_first_attempt(FaultPlan(row_failures={429: 0.2}, seed=1)))
    assert h.pipeline.sensor is None

    result = h.materialize(h.assets, DAY)

    assert result.success
    frame = h.results(DAY)
    assert len(frame) == 30 and set(frame["outcome"]) == {"succeeded"}
    assert (frame["attempt"] == 2).any()
    assert checks_of(result)[ROWS_CHECK]


def test_terminating_a_blocking_run_cancels_its_batch(local_service, instance, tmp_path):
    slow = local_service(speed="realistic")
    child = run_child("blocking", slow, tmp_path / "storage", instance, CHILD_ROWS="60")
    batch = wait_until(lambda: service_batches(slow))[0]
    assert batch["status"] not in TERMINAL

    try:
        _interrupt(child, lambda: slow.engine.get_batch(batch["id"])["status"] in ("cancelling", "cancelled"), seconds=60)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGUSR1)  # the child's faulthandler prints where each thread is
        try:
            child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
        _, stderr = child.communicate()
        raise AssertionError(f"the run did not stop within 60 s of SIGINT; its threads:\n{stderr.decode()[-6000:]}") from None

    final = wait_until(lambda: (b := slow.engine.get_batch(batch["id"]))["status"] in ("cancelling", "cancelled") and b)
    assert final["status"] in ("cancelling", "cancelled")


def _interrupt(child: subprocess.Popen, cancelled: Callable[[], bool], *, seconds: float) -> None:
    """SIGINT ``child`` until it exits or ``cancelled()`` (TimeoutExpired after ``seconds``).

    Dagster raises the interrupt from its signal handler; one that lands in a garbage-collection
    callback (SQLAlchemy's, in the worker's instance calls) is swallowed by Python, so a worker
    that shows no sign of it is told again, as an operator terminating a run would; never once it
    cancels (a second interrupt must not cut its cancel short).
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        child.send_signal(signal.SIGINT)
        told = time.monotonic()
        while time.monotonic() - told < 2.0:
            if child.poll() is not None or cancelled():
                child.communicate(timeout=max(1.0, deadline - time.monotonic()))
                return
            time.sleep(0.05)
    raise subprocess.TimeoutExpired(child.args, seconds)


def test_request_files_are_not_rewritten_while_a_submit_holds_the_partition(harness, instance, tmp_path):
    """A requests run waits for the partition's lock (what a submit holds while it reads the files)."""
    h = harness(rows=4)
    h.materialize([h.texts, h.pipeline.requests_asset], DAY)
    [manifest] = (tmp_path / "storage").rglob("manifest.json")
    written = manifest.stat().st_mtime_ns
    rebuild = threading.Thread(target=h.materialize, args=([h.pipeline.requests_asset], DAY))
    submit = in_progress_run(instance)  # as a submit does while it lists, reads and uploads
    key = lock_key(h.pipeline.name, DAY)

    with PartitionLock(instance, submit.run_id, "submit")(h.pipeline.name, DAY):
        rebuild.start()
        wait_until(lambda: not rebuild.is_alive() or _waiting_for(instance, key, other_than=submit.run_id))
        assert rebuild.is_alive(), "the requests run rewrote the files without waiting for the partition's lock"
        assert manifest.stat().st_mtime_ns == written  # nothing rewritten under the submit's feet
    rebuild.join(timeout=60)

    assert not rebuild.is_alive() and manifest.stat().st_mtime_ns > written
    assert h.latest_metadata(h.pipeline.requests_asset, DAY)["rows"] == 4


def _waiting_for(instance: dg.DagsterInstance, key: str, *, other_than: str) -> bool:
    """Whether a run other than ``other_than`` waits for the lock ``key``."""
    return any(step.run_id != other_than for step in instance.event_log_storage.get_concurrency_info(key).pending_steps)


def test_a_submit_reads_only_the_recent_end_of_a_long_batch_history(harness, service, tmp_path):
    """An account with 250 month-old batches: a submit lists one page of them, not the whole history."""
    old_file = service.engine.create_file("old.jsonl", "batch", write_requests(tmp_path / "old.jsonl", 1))
    for _ in range(250):
        service.engine.create_batch(old_file["id"], "/v1/chat/completions", "24h")
    with service.engine.store.write() as db:  # a month ago: the provider's record of an older project
        db.execute("UPDATE batches SET created_at = created_at - 30 * 86400")
    h = harness(rows=4)

    with capture_logs(logging.INFO) as records:
        h.submit([DAY])
    first_listing = requests_sent(records, "GET", "/v1/batches?")
    with capture_logs(logging.INFO) as records:
        h.materialize([h.pipeline.batch_asset], DAY)  # again: re-attaches to the batch just made

    # One page per listing (before creating, and again after to catch a racing submitter): the
    # first page already reaches back past the partition's start. The whole history is 3 pages.
    assert first_listing == 2
    assert requests_sent(records, "GET", "/v1/batches?") == 1
    assert h.submission(DAY)["reattached"] == 1
    assert len([b for b in service_batches(service) if b["metadata"] and b["metadata"].get("bp_partition") == DAY]) == 1


def test_cancel_job_stops_the_partition_without_retrying(harness, local_service):
    slow = local_service(speed="realistic")
    h = harness(rows=60, on=slow)
    h.submit([DAY])
    [batch] = service_batches(slow)

    job = h.defs.resolve_job_def(h.pipeline.cancel_job.name)
    result = job.execute_in_process(
        instance=h.instance, run_config={"ops": {"classify_cancel_batches": {"config": {"partitions": [DAY]}}}}
    )

    assert result.success
    assert slow.engine.get_batch(batch["id"])["status"] in ("cancelling", "cancelled")
    h.drive([DAY])
    frame = h.results(DAY)
    assert len(frame) == 60 and "cancelled" in set(frame["outcome"])
    assert len(service_batches(slow)) == 1  # cancelled rows were not sent again


def test_rejected_rows_are_reported_under_quarantine(harness, service):
    h = harness(rows=6, policy="quarantine", edit=lambda frame: frame.assign(text=frame["text"].where(frame.index != 2)))
    h.submit([DAY])
    assert h.latest_metadata(h.pipeline.requests_asset, DAY)["rejected_rows"] == 1

    h.drive([DAY])

    frame = h.results(DAY)
    assert frame["outcome"].tolist().count("rejected") == 1 and frame.loc[2, "outcome"] == "rejected"
    assert checks_of(h.executed[-1])[ROWS_CHECK]


def test_invalid_rows_fail_the_requests_run_with_their_keys(harness, service):
    h = harness(rows=4, edit=lambda frame: frame.assign(text_id=["a", "a", "b", "c"]))

    result = h.materialize([h.texts, h.pipeline.requests_asset], DAY, raise_on_error=False)

    assert not result.success
    failure = result.failure_data_for_node("classify_requests").error.message
    assert "duplicate_key" in failure and "'a'" in failure
    assert service_batches(service) == []


@pytest.mark.parametrize("source_kind", ["key", "spec"])
def test_source_may_be_a_key_or_spec(source_kind):
    from batch_pipelines import build_batch_pipeline
    from batch_pipelines_tests.support.driver import SPEC

    source = dg.AssetKey("texts") if source_kind == "key" else dg.AssetSpec("texts", partitions_def=DAYS)
    pipeline = build_batch_pipeline("p", source=source, spec=SPEC, partitions_def=DAYS if source_kind == "key" else None)
    assert pipeline.results_asset.partitions_def == DAYS
    assert [a.key.to_user_string() for a in pipeline.assets] == ["p_requests", "p_batch", "p_results"]
    assert pipeline.sensor is not None and pipeline.sensor.name == "p_sensor"
    assert {c.name for c in pipeline.checks} == {ROWS_CHECK, FAILURE_RATE_CHECK, OUTPUT_VALID_CHECK}


def test_an_unpartitioned_source_in_blocking_mode(instance, service, tmp_path):
    from batch_pipelines import build_batch_pipeline
    from batch_pipelines_tests.support.driver import SPEC, Harness, make_resource

    @dg.asset(name="texts")
    def texts():  # noqa: ANN202
        import pandas as pd

        return pd.DataFrame({"text_id": ["a", "b", "c"], "text": ["poem", "election", "pasta"]})

    pipeline = build_batch_pipeline("whole", source=texts, spec=SPEC, blocking=True)
    h = Harness(instance, pipeline, texts, make_resource(service.base_url, tmp_path / "storage"))

    assert h.materialize(h.assets, None).success

    [batch] = service_batches(service)
    assert batch["metadata"]["bp_partition"] == "__all__"
    frame = h.defs.load_asset_value(pipeline.results_asset.key, instance=instance)
    assert frame["text_id"].tolist() == ["a", "b", "c"] and set(frame["outcome"]) == {"succeeded"}
    assert (tmp_path / "storage" / "whole" / "__all__" / "attempt-1" / "manifest.json").exists()
