"""The reuse store: answers by fingerprint in segments any process can add, newest first, with a retention."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

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
    aged = f"{(time.time_ns() // 1_000_000) - 2 * 86_400_000:013d}-{old.name.split('-', 1)[1]}"
    old.rename(tmp_path / aged)
    assert not store.known()(pa.array([fp("a")])).any()
    store.record(_answers(["b"], "new"))
    assert not (tmp_path / aged).exists() and store.known()(pa.array([fp("a"), fp("b")])).tolist() == [False, True]


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


def test_a_segment_written_before_the_sorted_halves_is_still_read(tmp_path):
    store = ReuseStore(tmp_path)
    old = store.record(_answers(["a", "b"], "old"))
    assert old is not None
    table = pa.ipc.open_file(pa.OSFile(str(old))).read_all()  # read, not mapped: the file is rewritten
    legacy = table.drop_columns([c for c in table.column_names if c.startswith("fingerprint_high_")])
    with pa.OSFile(str(old), "wb") as sink, pa.ipc.new_file(sink, legacy.schema) as writer:
        writer.write_table(legacy)  # as the version before wrote it: answers and both halves only
    store.record(_answers(["c"], "new"))

    known = store.known()
    positions = known.positions(pa.array([fp("b"), fp("c"), fp("x"), fp("a")]))

    assert (positions >= 0).tolist() == [True, True, False, True]
    assert known.answers(positions[positions >= 0])[0].column("content").to_pylist() == ["old b", "new c", "old a"]
