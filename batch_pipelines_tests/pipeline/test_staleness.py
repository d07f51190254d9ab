"""An answer stays only with the content that was sent: rows changed after submission are never
shown with the old answer, through Dagster on the local service over HTTP."""

from __future__ import annotations

from typing import Any

import pandas as pd

from batch_pipelines.local_service import FAULTS_METADATA_KEY, FaultPlan
from batch_pipelines.pipeline import FAILURE_RATE_CHECK, ROWS_CHECK
from batch_pipelines_tests.support.request_files import read_jsonl
from batch_pipelines_tests.support.service import LocalService, service_batches
from batch_pipelines_tests.support.waiting import wait_until

DAY = "2024-01-01"
CHANGED = (1, 4)  # rows whose text is corrected after their batch was submitted


def _corrections(state: dict[str, bool]) -> Any:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        if not state["changed"]:
            return frame
        text = frame["text"].copy()
        for row in CHANGED:
            text.iloc[row] = f"{text.iloc[row]} (corrected)"
        return frame.assign(text=text)

    return edit


def _sent_texts(service: LocalService, batch_ids: set[str]) -> dict[tuple[str, str], str]:
    """(batch id, custom_id) -> the user text that batch was sent for that row."""
    sent = {}
    for batch_id in batch_ids:
        batch = service.engine.get_batch(batch_id)
        for line in read_jsonl(service.engine.file_content_path(batch["input_file_id"])):
            sent[batch_id, line["custom_id"]] = line["body"]["messages"][-1]["content"]
    return sent


def _answers_belong_to_the_text(frame: pd.DataFrame, service: LocalService) -> None:
    answered = frame[frame["outcome"] == "succeeded"]
    sent = _sent_texts(service, set(answered["batch_id"].astype(str)))
    for row in answered.itertuples():
        assert sent[str(row.batch_id), row.custom_id].endswith(row.text), f"{row.custom_id}: answer to {sent[str(row.batch_id), row.custom_id]!r}, text {row.text!r}"


def test_a_source_changed_after_submission_gets_answers_to_its_new_text(harness, service):
    state = {"changed": False}
    h = harness(rows=6, edit=_corrections(state))
    h.submit([DAY])
    state["changed"] = True
    h.materialize([h.texts], DAY)  # the source corrected, its request files and batch left as they were

    h.drive([DAY])

    frame = h.results(DAY)
    assert set(frame["outcome"]) == {"succeeded"}
    assert frame["text"].str.endswith("(corrected)").sum() == len(CHANGED)
    _answers_belong_to_the_text(frame, service)
    meta = h.latest_metadata(h.pipeline.results_asset, DAY)
    assert meta["attempts"] == 2 and meta["stale"] == 0
    # Only the changed rows went again, in a follow-up batch of their own.
    resent = frame[frame["attempt"] == 2]
    assert sorted(resent.index.tolist()) == sorted(frame.index[list(CHANGED)].tolist())


def test_the_source_and_its_request_files_rebuilt_after_submission_get_no_old_answer(harness, service):
    state = {"changed": False}
    h = harness(rows=6, edit=_corrections(state))
    h.submit([DAY])
    state["changed"] = True
    h.materialize([h.texts, h.pipeline.requests_asset], DAY)  # the files the batch ran are rewritten

    h.drive([DAY])

    frame = h.results(DAY)
    assert set(frame["outcome"]) == {"succeeded"}
    _answers_belong_to_the_text(frame, service)


def test_a_changed_row_can_be_reported_stale_instead(harness, service):
    state = {"changed": False}
    h = harness(rows=6, edit=_corrections(state), on_stale="report")
    h.submit([DAY])
    state["changed"] = True
    h.materialize([h.texts], DAY)

    h.drive([DAY])

    frame = h.results(DAY)
    stale = frame.iloc[list(CHANGED)]
    assert set(stale["outcome"]) == {"stale"} and stale["content"].isna().all() and stale["output_category"].isna().all()
    assert set(stale["error_code"]) == {"content_changed"}
    assert set(frame.drop(index=stale.index)["outcome"]) == {"succeeded"}
    assert frame["request_fingerprint"].notna().all()
    checks = {e.check_name: e for e in h.executed[-1].get_asset_check_evaluations()}
    assert checks[ROWS_CHECK].passed and checks[ROWS_CHECK].metadata["stale_rows"].value == len(CHANGED)
    assert not checks[FAILURE_RATE_CHECK].passed
    _answers_belong_to_the_text(frame, service)


ROWS = 40


def test_what_a_superseded_batch_finished_is_kept_and_only_the_rest_is_sent_again(harness, service):
    """Rows corrected while their batch runs: the rebuild cancels it, keeps the answers it had
    bought for rows that did not change, and sends only the others."""
    state = {"changed": False}
    # A row a second: the rebuild comes long before the batch could end, however loaded the machine.
    slow = FaultPlan(row_delay=1.0).to_json()
    slow_first = lambda partition, attempt: {} if state["changed"] else {FAULTS_METADATA_KEY: slow}  # noqa: E731
    h = harness(rows=ROWS, edit=_corrections(state), batch_tags=slow_first)
    h.submit([DAY])
    [old] = service_batches(service)
    wait_until(lambda: service.engine.get_batch(old["id"])["request_counts"]["completed"] >= 2)
    state["changed"] = True

    h.materialize([h.texts, h.pipeline.requests_asset], DAY)  # corrected rows 1 and 4: new request files

    cancelled = service.engine.get_batch(old["id"])
    assert cancelled["status"] == "cancelled"
    finished = {line["custom_id"] for line in read_jsonl(service.engine.file_content_path(cancelled["output_file_id"]))}
    meta = h.latest_metadata(h.pipeline.requests_asset, DAY)
    assert meta["superseded_batches"] == [old["id"]]
    kept = finished - {f"{DAY}-{i:03d}" for i in CHANGED}
    assert meta["answers_kept_from_superseded"] == len(finished) and meta["rows_reused"] == len(kept)

    h.materialize([h.pipeline.batch_asset], DAY)
    h.drive([DAY])

    [new] = [b for b in service_batches(service) if b["id"] != old["id"]]
    sent = {line["custom_id"] for line in read_jsonl(service.engine.file_content_path(new["input_file_id"]))}
    assert sent == {f"{DAY}-{i:03d}" for i in range(ROWS)} - kept  # the rest, and the corrected rows
    frame = h.results(DAY)
    assert set(frame["outcome"]) == {"succeeded"} and len(frame) == ROWS
    assert set(frame.loc[frame["reused"], "custom_id"]) == kept
    assert set(frame.loc[frame["reused"], "batch_id"]) == {old["id"]}  # the batch that bought them
    _answers_belong_to_the_text(frame, service)


def test_what_a_superseded_batch_that_had_ended_answered_is_kept(harness, service):
    """A batch that ended before its results were joined, its rows then corrected: its answers for
    the rows that did not change were paid for, and are not bought again."""
    state = {"changed": False}
    h = harness(rows=ROWS, edit=_corrections(state))
    h.submit([DAY])
    [old] = service_batches(service)
    wait_until(lambda: service.engine.get_batch(old["id"])["status"] == "completed")
    state["changed"] = True

    h.materialize([h.texts, h.pipeline.requests_asset], DAY)  # no results were joined from the old batch

    meta = h.latest_metadata(h.pipeline.requests_asset, DAY)
    assert "superseded_batches" not in meta  # nothing left to cancel
    assert meta["answers_kept_from_superseded"] == ROWS and meta["rows_reused"] == ROWS - len(CHANGED)
    h.materialize([h.pipeline.batch_asset], DAY)
    h.drive([DAY])

    [new] = [b for b in service_batches(service) if b["id"] != old["id"]]
    sent = {line["custom_id"] for line in read_jsonl(service.engine.file_content_path(new["input_file_id"]))}
    assert sent == {f"{DAY}-{i:03d}" for i in CHANGED}
    frame = h.results(DAY)
    assert set(frame["outcome"]) == {"succeeded"} and len(frame) == ROWS
    assert set(frame.loc[frame["reused"], "batch_id"]) == {old["id"]}
    _answers_belong_to_the_text(frame, service)
