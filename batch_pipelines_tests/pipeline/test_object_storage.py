"""The pipeline with its storage on a real S3 API server (moto's, on 127.0.0.1): nothing on the
local disk, and run workers that share only the instance and the bucket."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from batch_pipelines_tests.support.child_runs import start_child
from batch_pipelines_tests.support.driver import Harness, build, make_resource, make_texts
from batch_pipelines_tests.support.object_storage import Bucket, s3_bucket, s3_endpoint  # noqa: F401 (fixtures)
from batch_pipelines_tests.support.service import service_batches

DAY = "2024-01-01"


@pytest.fixture
def on_s3(instance, service, s3_bucket):
    """``on_s3(rows=..., **options)``: the test's pipeline with ``storage_dir`` in the bucket."""

    def make(rows: int = 8, **options):
        texts = make_texts(rows)
        resource = make_resource(service.base_url, s3_bucket.url, storage_options=s3_bucket.options)
        return Harness(instance, build(source=texts, **options), texts, resource)

    return make


def _no_local_storage(tmp_path: Path, instance) -> None:
    assert not (tmp_path / "storage").exists()
    assert not (Path(instance.storage_directory()) / "batch_pipelines").exists()


def test_two_run_workers_sharing_only_the_instance_and_the_bucket_submit_once(on_s3, s3_bucket, service, instance, tmp_path):
    """Requests built here, submitted by two racing run workers, results joined here: all through the bucket."""
    h = on_s3(rows=8, max_requests_per_shard=3)
    h.materialize([h.texts, h.pipeline.requests_asset], DAY)
    workers = []
    for n in range(2):  # separate working directories and temporary folders: no disk in common
        home = tmp_path / f"worker-{n}"
        (home / "tmp").mkdir(parents=True)
        env = {"TMPDIR": str(home / "tmp"), "CHILD_STORAGE_OPTIONS": json.dumps(s3_bucket.options)}
        workers.append(
            start_child("race", service.base_url, s3_bucket.url, DAY, home=instance.root_directory, key=service.api_key or "",
                        env=env, cwd=home, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )  # fmt: skip
    try:
        for worker in workers:  # both loaded, then both at once
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready", worker.communicate()[1][-2000:]
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.close()
        codes = [worker.wait(timeout=120) for worker in workers]
        assert codes == [0, 0], [w.stderr.read()[-2000:] for w in workers if w.stderr]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    batches = service_batches(service)
    assert len(batches) == 3  # one per shard: the second worker re-attached to the first's
    h.drive([DAY])
    frame = h.results(DAY)
    assert len(frame) == 8 and frame["custom_id"].is_unique and set(frame["outcome"]) == {"succeeded"}
    for n in range(2):
        assert not list((tmp_path / f"worker-{n}" / "tmp").iterdir())  # each worker's scratch copy went with its steps
    _no_local_storage(tmp_path, instance)
    keys = set(s3_bucket.keys())
    folder = f"{h.pipeline.name}/{DAY}/attempt-1"
    assert {f"{folder}/{name}" for name in ("manifest.json", "ids.parquet", *(f"shard-0000{i}.jsonl" for i in range(3)))} <= keys
    assert sum(k.startswith(f"{h.pipeline.name}/{DAY}/downloads/") for k in keys) == 3  # for later runs: none downloads again
    assert any(k.startswith(f"{h.pipeline.name}/_reuse/") for k in keys)
    cleanup = h.latest_metadata(h.pipeline.results_asset, DAY)["storage_cleanup"]
    assert cleanup == {"files_deleted": 0, "bytes_deleted": 0, "partitions": 0}  # nothing is old yet


def test_the_reuse_store_in_the_bucket_answers_a_rerun_and_sheds_expired_segments(s3_bucket, service, instance, tmp_path):
    """A results step records its answers without fetching the store; a rerun's build fetches each
    segment's keys, its results step the answers it reuses; expired segments go from the bucket."""
    from batch_pipelines.storage import Storage

    changed = {"now": False}

    def correct_row_2(frame):
        return frame.assign(text=frame["text"].where(frame.index != 2, frame["text"] + " (corrected)")) if changed["now"] else frame

    texts = make_texts(6, correct_row_2)
    h = Harness(instance, build(source=texts), texts, make_resource(service.base_url, s3_bucket.url, storage_options=s3_bucket.options))
    bucket = Storage(s3_bucket.url, s3_bucket.options)
    reuse = f"{h.pipeline.name}/_reuse"
    month_ago = f"{int(time.time() * 1000) - 40 * 86_400_000:013d}-{'0' * 32}"
    for name in (f"{month_ago}.arrow", f"{month_ago}.keys.arrow"):  # past reuse_retention_days (30)
        bucket.write_bytes(f"{reuse}/{name}", b"an expired segment")
    h.submit([DAY])
    h.drive([DAY])

    names = sorted(k.rsplit("/", 1)[-1] for k in s3_bucket.keys() if k.startswith(f"{reuse}/"))
    assert not [n for n in names if n.startswith(month_ago)]
    [answers, keys] = names  # the results run's segment: its answers and its keys
    assert keys == answers.removesuffix(".arrow") + ".keys.arrow"

    changed["now"] = True
    h.submit([DAY])
    assert h.latest_metadata(h.pipeline.requests_asset, DAY)["rows_reused"] == 5  # all but the corrected row
    h.next_round(DAY)
    frame = h.results(DAY)
    assert len(frame) == 6 and set(frame["outcome"]) == {"succeeded"}
    assert frame["reused"].tolist() == [True, True, False, True, True, True]
    assert frame.loc[2, "text"].endswith("(corrected)")
    _no_local_storage(tmp_path, instance)
