"""Every row is paid for once: through Dagster on the local service over HTTP, answers already
bought are reused (in any partition, by any run worker) and only new or changed rows are sent."""

from __future__ import annotations

import subprocess
from collections import Counter
from typing import Any

import dagster as dg
import pandas as pd

from batch_pipelines.pipeline import REUSE_RUN_TAG
from batch_pipelines_tests.support.child_runs import start_child
from batch_pipelines_tests.support.service import LocalService, sent_fingerprints, sent_per_custom_id, service_batches

DAY, NEXT_DAY = "2024-01-01", "2024-01-02"


def _edited(state: dict[str, Any]) -> Any:
    """An edit of the source that appends " (v2)" to the rows listed in ``state["rows"]``."""

    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        text = frame["text"].copy()
        for row in state["rows"]:
            text.iloc[row] = f"{text.iloc[row]} (v2)"
        return frame.assign(text=text)

    return edit


def _answers_belong_to_their_content(frame: pd.DataFrame, service: LocalService) -> None:
    """Every answer came from a batch that was sent a request with the row's current content."""
    asked: dict[str, set[str]] = {}
    for (batch_id, _), fingerprint in sent_fingerprints(service).items():
        asked.setdefault(batch_id, set()).add(fingerprint)
    for row in frame[frame["outcome"] == "succeeded"].itertuples():
        assert row.request_fingerprint in asked[str(row.batch_id)], f"{row.custom_id}: {row.batch_id} answered other content"


def test_half_the_rows_changed_sends_exactly_those(harness, service):
    state: dict[str, Any] = {"rows": []}
    h = harness(rows=8, edit=_edited(state))
    h.submit([DAY])
    h.drive([DAY])
    assert len(service_batches(service)) == 1

    state["rows"] = [0, 2, 4, 6]
    h.submit([DAY])  # the source corrected, its request files rebuilt and submitted

    meta = h.latest_metadata(h.pipeline.requests_asset, DAY)
    assert meta["rows_to_send"] == 4 and meta["rows_reused"] == 4
    assert len(service_batches(service)) == 2
    changed = {f"{DAY}-{i:03d}" for i in state["rows"]}
    sent = sent_per_custom_id(service)
    assert {cid for cid, n in sent.items() if n == 2} == changed  # each changed row once more, nothing else
    h.next_round(DAY)
    frame = h.results(DAY)
    assert set(frame["outcome"]) == {"succeeded"}
    assert set(frame.loc[frame["reused"], "custom_id"]) == {f"{DAY}-{i:03d}" for i in (1, 3, 5, 7)}
    _answers_belong_to_their_content(frame, service)
    results = h.latest_metadata(h.pipeline.results_asset, DAY)
    assert results["reused"] == 4
    fresh = frame[~frame["reused"]]
    assert results["total_tokens"] == int(fresh["total_tokens"].sum())  # only what this round paid for


def test_duplicate_texts_are_sent_once_and_each_row_gets_the_answer(harness, service):
    def twins(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(text=["same question A"] * 3 + ["same question B"] * 3)

    h = harness(rows=6, edit=twins)
    h.submit([DAY])

    meta = h.latest_metadata(h.pipeline.requests_asset, DAY)
    assert meta["rows_to_send"] == 2 and meta["rows_reused"] == 4
    assert sum(sent_per_custom_id(service).values()) == 2
    h.drive([DAY])
    frame = h.results(DAY)
    assert set(frame["outcome"]) == {"succeeded"} and frame["reused"].sum() == 4
    for _, group in frame.groupby("text"):
        assert group["content"].nunique() == 1 and group["batch_id"].nunique() == 1
    _answers_belong_to_their_content(frame, service)


def test_a_run_tag_bypasses_reuse_and_a_pipeline_can_turn_it_off(harness, service):
    h = harness(rows=4)
    h.submit([DAY])
    h.drive([DAY])

    h.run([h.texts, h.pipeline.requests_asset], DAY, tags={REUSE_RUN_TAG: "off"})
    meta = h.latest_metadata(h.pipeline.requests_asset, DAY)
    assert meta["rows_to_send"] == 4 and meta["rows_reused"] == 0 and meta["reuse"] == "off for this run"

    off = harness(rows=4, reuse=False)
    off.run([off.texts, off.pipeline.requests_asset], DAY)
    assert off.latest_metadata(off.pipeline.requests_asset, DAY)["reuse"] == "off"
    assert off.latest_metadata(off.pipeline.requests_asset, DAY)["rows_to_send"] == 4


def test_two_run_workers_share_the_reuse_store(service: LocalService, instance: dg.DagsterInstance, tmp_path):
    """Two processes, each a run worker: answers one bought for a day serve another day's same rows."""

    def worker(partition: str) -> None:
        child = start_child(
            "pipeline", service.base_url, tmp_path / "storage", partition, home=instance.root_directory,
            key=service.api_key or "", env={"CHILD_SHARED_TEXTS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, stderr.decode()[-3000:]

    worker(DAY)
    assert len(service_batches(service)) == 1
    worker(NEXT_DAY)

    assert len(service_batches(service)) == 1  # the second day sent nothing
    assert Counter(sent_per_custom_id(service).values()) == Counter({1: 8})
    records = instance.fetch_materializations(dg.AssetKey("classify_results"), limit=2).records
    latest = {r.partition_key: r.asset_materialization.metadata for r in records}  # type: ignore[union-attr]
    assert latest[NEXT_DAY]["reused"].value == 8 and latest[NEXT_DAY]["succeeded"].value == 8
    assert latest[DAY]["reused"].value == 0
