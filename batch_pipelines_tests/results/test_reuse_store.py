"""The reuse store: answers by fingerprint in segments any process can add, newest first, with a retention."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import xxhash

from batch_pipelines.requests import FINGERPRINT_COLUMN
from batch_pipelines.results import ReuseStore


def fp(name: str) -> str:
    """A fingerprint-shaped name (32 hex digits), as the id map holds them."""
    return xxhash.xxh3_128_hexdigest(name.encode())


def _answers(names: list[str], content: str, batch: str = "batch_1") -> pd.DataFrame:
    return pd.DataFrame({
        FINGERPRINT_COLUMN: [fp(n) for n in names], "content": [f"{content} {n}" for n in names],
        "batch_id": pd.Categorical([batch] * len(names)),
    })  # fmt: skip


def _write(root: str, prints: list[str], content: str) -> None:
    ReuseStore(Path(root)).record(_answers(prints, content))


def test_answers_are_found_by_fingerprint_and_the_newest_wins(tmp_path):
    store = ReuseStore(tmp_path)
    store.record(_answers(["a", "b"], "old"))
    store.record(_answers(["b", "c"], "new", batch="batch_2"))

    known = store.known()
    asked = pa.array([fp("b"), fp("a"), fp("x")])
    assert known(asked).tolist() == [True, True, False]
    twice = known.positions(pa.array([fp("c"), fp("b"), fp("c")]))  # one fingerprint asked twice: found twice
    assert twice[0] == twice[2] >= 0 and known.answers(twice)[0].column("content").to_pylist() == ["new c", "new b", "new c"]
    positions = known.positions(asked)
    table, found = known.answers(positions[:2])
    assert found.tolist() == [True, True]
    assert table.column("content").to_pylist() == ["new b", "old a"]
    assert table.column("batch_id").to_pylist() == ["batch_2", "batch_1"]


def test_segments_older_than_the_retention_are_ignored_and_deleted(tmp_path):
    store = ReuseStore(tmp_path, retention_days=1)
    old = store.record(_answers(["a"], "old"))
    assert old is not None
    two_days_ago = f"{(time.time_ns() // 1_000_000) - 2 * 86_400_000:013d}"
    for path in tmp_path.glob(f"{old.stem}*"):  # its answers and its keys
        path.rename(tmp_path / f"{two_days_ago}-{path.name.split('-', 1)[1]}")
    assert not store.known()(pa.array([fp("a")])).any()
    store.record(_answers(["b"], "new"))
    assert not list(tmp_path.glob(f"{two_days_ago}-*")) and store.known()(pa.array([fp("a"), fp("b")])).tolist() == [False, True]
    assert store.expired([f"{two_days_ago}-x.arrow", f"{two_days_ago}-x.keys.arrow", "9999999999999-y.arrow"]) == [
        f"{two_days_ago}-x.keys.arrow", f"{two_days_ago}-x.arrow"
    ]  # keys first: a lookup stops finding the segment before its answers go


def test_a_segment_deleted_after_the_snapshot_only_loses_its_answers(tmp_path):
    store = ReuseStore(tmp_path)
    gone = store.record(_answers(["a"], "x"))
    store.record(_answers(["b"], "y"))
    known = store.known()
    os.unlink(gone)  # another worker's retention, between the lookup and the read
    table, found = known.answers(known.positions(pa.array([fp("a"), fp("b")])))
    assert found.tolist() == [False, True] and table.column("content").to_pylist() == ["y b"]


def test_two_processes_write_at_once_and_each_reads_the_other(tmp_path):
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_write, args=(str(tmp_path), [f"{w}-{i}" for i in range(500)], f"w{w}")) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    known = ReuseStore(tmp_path).known()
    assert known(pa.array([fp(f"{w}-{i}") for w in range(2) for i in range(500)])).all()
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, renamed whole


def test_bad_settings_and_input_are_refused(tmp_path):
    with pytest.raises(ValueError, match="retention_days"):
        ReuseStore(tmp_path, retention_days=0)
    with pytest.raises(ValueError, match=FINGERPRINT_COLUMN):
        ReuseStore(tmp_path).record(pd.DataFrame({"content": ["x"]}))
    assert ReuseStore(tmp_path).record(_answers([], "none")) is None


@pytest.mark.parametrize("sorted_halves", [True, False], ids=["sorted-halves-in-one-file", "halves-only"])
def test_a_segment_an_older_version_wrote_in_one_file_is_still_read(tmp_path, sorted_halves):
    store = ReuseStore(tmp_path)
    old = store.record(_answers(["a", "b"], "old"))
    assert old is not None
    keys = old.with_name(old.stem + ".keys.arrow")
    answers = pa.ipc.open_file(pa.OSFile(str(old))).read_all()  # read, not mapped: the files are rewritten
    sidecar = pa.ipc.open_file(pa.OSFile(str(keys))).read_all()
    order = sidecar.column("fingerprint_high_row").to_numpy()
    high, low = np.empty(len(order), dtype=np.uint64), np.empty(len(order), dtype=np.uint64)
    high[order], low[order] = sidecar.column("fingerprint_high_sorted").to_numpy(), sidecar.column("fingerprint_low_sorted").to_numpy()
    legacy = answers.append_column("fingerprint_high", pa.array(high)).append_column("fingerprint_low", pa.array(low))
    if sorted_halves:
        legacy = legacy.append_column("fingerprint_high_sorted", sidecar.column(0)).append_column("fingerprint_high_row", sidecar.column(1))
    keys.unlink()
    with pa.OSFile(str(old), "wb") as sink, pa.ipc.new_file(sink, legacy.schema) as writer:
        writer.write_table(legacy)  # as the versions before wrote it: one file, answers and keys
    store.record(_answers(["c"], "new"))

    known = store.known()
    positions = known.positions(pa.array([fp("b"), fp("c"), fp("x"), fp("a")]))

    assert (positions >= 0).tolist() == [True, True, False, True]
    table = known.answers(positions[positions >= 0])[0]
    assert table.column("content").to_pylist() == ["old b", "new c", "old a"]
    assert not {"fingerprint_high", "fingerprint_low", "fingerprint_high_sorted", "fingerprint_high_row"} & set(table.column_names)
    assert store.lookup_files(p.name for p in tmp_path.iterdir()) == {old.name, *(p.name for p in tmp_path.glob("*.keys.arrow"))}


def test_a_lookup_reads_only_the_keys_and_fetches_the_answers_of_the_segments_it_hits(tmp_path):
    """As a worker on object storage does: the keys of every segment here, answers fetched when asked."""
    stored, local = tmp_path / "stored", tmp_path / "local"
    store = ReuseStore(stored)
    first = store.record(_answers(["a", "b"], "one"))
    second = store.record(_answers(["c"], "two"))
    assert first is not None and second is not None
    names = {p.name for p in stored.iterdir()}
    wanted = store.lookup_files(names)
    assert wanted == {first.stem + ".keys.arrow", second.stem + ".keys.arrow"}  # 24 bytes a row, not the answers
    local.mkdir()
    for name in wanted:
        shutil.copy(stored / name, local / name)
    fetched: list[str] = []

    def fetch(path: Path) -> Path:
        fetched.append(path.name)
        shutil.copy(stored / path.name, path)
        return path

    known = ReuseStore(local).known(fetch=fetch)
    positions = known.positions(pa.array([fp("b"), fp("x")]))
    assert (positions >= 0).tolist() == [True, False] and fetched == []  # a lookup reads keys only
    table, found = known.answers(positions[:1])
    assert found.tolist() == [True] and table.column("content").to_pylist() == ["one b"]
    assert fetched == [first.name]  # the segment that holds the answer, not the other
    # A segment whose answers are not stored yet (its keys are renamed into place last) is none yet.
    assert store.lookup_files({"1-x.keys.arrow"}) == set()
