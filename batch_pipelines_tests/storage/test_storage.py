"""The storage layer on a local folder and on a real S3 API server: atomic writes, listing, deletion,
working copies and the retention clean-up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from batch_pipelines.storage import Storage, WorkingCopy, clean_up
from batch_pipelines_tests.support.object_storage import Bucket, s3_bucket, s3_endpoint  # noqa: F401 (fixtures)

_DAY = 86_400


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return Storage(tmp_path / "storage")
    bucket: Bucket = request.getfixturevalue("s3_bucket")
    return Storage(bucket.url, bucket.options)


def test_a_write_is_whole_and_leaves_nothing_beside_it(storage):
    storage.write_bytes("p/day/manifest.json", b'{"v": 1}')
    storage.write_bytes("p/day/manifest.json", b'{"v": 2}')  # replaced, never half written

    assert storage.read_bytes("p/day/manifest.json") == b'{"v": 2}'
    assert [(f.path, f.size) for f in storage.files()] == [("p/day/manifest.json", 8)]


def test_files_are_listed_under_a_folder_and_deleted(storage):
    for path in ("p/a/attempt-1/shard-00000.jsonl", "p/a/downloads/b.output.jsonl", "p/b/attempt-1/ids.parquet", "q/x"):
        storage.write_bytes(path, b"x")

    assert [f.path for f in storage.files("p/a")] == ["p/a/attempt-1/shard-00000.jsonl", "p/a/downloads/b.output.jsonl"]
    assert all(f.modified > time.time() - 3600 for f in storage.files())
    storage.delete(["p/a/downloads/b.output.jsonl", "p/absent"])
    assert [f.path for f in storage.files("p")] == ["p/a/attempt-1/shard-00000.jsonl", "p/b/attempt-1/ids.parquet"]
    assert storage.files("nothing/here") == []
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("p/absent")


def test_a_working_copy_pulls_and_pushes_what_changed(storage):
    storage.write_bytes("p/a/attempt-1/manifest.json", b"old")
    storage.write_bytes("p/a/attempt-1/shard-00000.jsonl", b"line\n")
    storage.write_bytes("p/a/attempt-1/shard-00001.jsonl", b"stale\n")
    with WorkingCopy(storage) as copy:
        folder = copy.pull(copy.local("p/a/attempt-1"))
        assert (folder / "shard-00000.jsonl").read_bytes() == b"line\n"
        (folder / "shard-00001.jsonl").unlink()  # a rebuild with fewer shards
        (folder / "manifest.json").write_bytes(b"new")
        copy.push(folder)
        scratch = copy.local()

    assert storage.read_bytes("p/a/attempt-1/manifest.json") == b"new"
    assert [f.path for f in storage.files("p")] == ["p/a/attempt-1/manifest.json", "p/a/attempt-1/shard-00000.jsonl"]
    if storage.is_local:
        assert scratch == storage.local_path()  # in place: nothing copied
    else:
        assert not scratch.exists()  # the scratch copy goes with the working copy


def test_an_exact_push_deletes_what_was_never_pulled(s3_bucket):
    # (On a local storage the folder is the stored one: the writer deletes what it replaces itself.)
    storage = Storage(s3_bucket.url, s3_bucket.options)
    storage.write_bytes("p/a/attempt-1/shard-00007.jsonl", b"stale\n")
    with WorkingCopy(storage) as copy:
        folder = copy.local("p/a/attempt-1")
        copy.pull(folder, names={"manifest.json"})
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_bytes(b"m")
        copy.push(folder, exact=True)

    assert [f.path for f in storage.files("p")] == ["p/a/attempt-1/manifest.json"]


def _partition(storage: Storage, name: str, attempts: int) -> None:
    for n in range(1, attempts + 1):
        storage.write_bytes(f"pipe/{name}/attempt-{n}/shard-00000.jsonl", b"0123456789")
    storage.write_bytes(f"pipe/{name}/downloads/batch.output.jsonl", b"01234")


def test_the_clean_up_keeps_the_first_and_newest_attempt_and_the_reuse_store(storage):
    _partition(storage, "2024-01-01", attempts=3)
    storage.write_bytes("pipe/_reuse/segment.arrow", b"answers")

    assert clean_up(storage, "pipe", retention_days=30, not_partitions={"_reuse"}).files == 0  # nothing old yet
    later = time.time() + 40 * _DAY
    done = clean_up(storage, "pipe", retention_days=30, not_partitions={"_reuse"}, now=later)

    assert (done.files, done.bytes, done.partitions) == (2, 15, 1)
    assert [f.path for f in storage.files("pipe")] == [
        "pipe/2024-01-01/attempt-1/shard-00000.jsonl",
        "pipe/2024-01-01/attempt-3/shard-00000.jsonl",
        "pipe/_reuse/segment.arrow",
    ]


def test_a_partition_with_recent_files_is_left_whole_unless_settled(tmp_path):
    storage = Storage(tmp_path)
    _partition(storage, "old", attempts=2)
    _partition(storage, "busy", attempts=2)
    month_ago = time.time() - 31 * _DAY
    for path in tmp_path.rglob("*"):
        if path.is_file() and not (path.parent.name == "attempt-2" and "busy" in path.parts):
            os.utime(path, (month_ago, month_ago))  # "busy" wrote its second attempt just now

    first = clean_up(storage, "pipe", retention_days=30)
    assert (first.files, first.partitions) == (1, 1)  # old's downloads; busy may have a round in flight
    second = clean_up(storage, "pipe", retention_days=30, settled={"busy"})
    assert (second.files, second.partitions) == (1, 1)  # busy's round is over: its old downloads go
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl")) == [
        "pipe/busy/attempt-1/shard-00000.jsonl",
        "pipe/busy/attempt-2/shard-00000.jsonl",
        "pipe/old/attempt-1/shard-00000.jsonl",
        "pipe/old/attempt-2/shard-00000.jsonl",
    ]


def test_an_unknown_filesystem_is_named():
    with pytest.raises(ValueError, match="nosuch://bucket/x"):
        Storage("nosuch://bucket/x")
