"""The join's accounting: every source row exactly once, in source order, with its outcome and columns;
lines that cannot be joined counted, never lost. On hand-written files, then on files the local
service produced under its fault plans.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pandas as pd
import pytest

from batch_pipelines.local_service import FaultPlan
from batch_pipelines.providers.base import ResultFiles
from batch_pipelines.requests import RequestSpec, build_request_files, custom_ids
from batch_pipelines.results import OUTCOMES, join_results, manifest_custom_ids, plan_retry
from batch_pipelines_tests.support.request_files import CHAT
from batch_pipelines_tests.support.result_files import (
    OPENAI,
    Run,
    Verdict,
    chat_spec,
    count,
    http_error,
    join,
    no_answer,
    ok,
    outcomes,
    source,
    texts,
)


# ---- hand-written files ---------------------------------------------------------------------


def test_every_outcome_in_source_order_with_its_columns(tmp_path):
    df, ids = source(8)
    df.index = [f"idx{i}" for i in range(8)]
    ids.index = df.index
    output = [ok("r3", "three", cached=4), ok("r0", "zero", finish="length")]
    errors = [http_error("r1", 500, None, "boom", "server_error"), http_error("r2", 400, "invalid_value", "bad input"),
              no_answer("r4", "batch_expired"), no_answer("r5", "batch_cancelled")]  # fmt: skip
    joined = join(tmp_path, df, ids, output, errors)
    f = joined.frame
    assert list(f.index) == list(df.index) and list(f["key"]) == list(df["key"]) and list(f["text"]) == list(df["text"])
    assert outcomes(f) == {"r0": "succeeded", "r1": "failed", "r2": "failed", "r3": "succeeded", "r4": "expired",
                           "r5": "cancelled", "r6": "missing", "r7": "missing"}  # fmt: skip
    assert f.loc["idx0", "content"] == "zero" and f.loc["idx0", "finish_reason"] == "length"
    assert f.loc["idx3", "cached_tokens"] == 4 and pd.isna(f.loc["idx0", "cached_tokens"])
    assert f.loc["idx1", "status_code"] == 500 and f.loc["idx1", "error_code"] == "server_error" and f.loc["idx1", "error_message"] == "boom"
    assert f.loc["idx2", "error_code"] == "invalid_value"
    assert pd.isna(f.loc["idx4", "status_code"]) and f.loc["idx4", "error_code"] == "batch_expired"
    assert "absent from both" in f.loc["idx6", "error_message"] and pd.isna(f.loc["idx6", "batch_id"])
    assert set(f["batch_id"].dropna()) == {"batch_1"} and (f["attempt"] == 1).all()
    assert str(f["outcome"].dtype) == "category" and list(f["outcome"].cat.categories) == list(OUTCOMES)
    assert str(f["prompt_tokens"].dtype) == "Int64" and str(f["content"].dtype) == "str"
    s = joined.summary
    assert (s.succeeded, s.failed, s.expired, s.cancelled, s.missing) == (2, 2, 1, 1, 2)
    assert (s.prompt_tokens, s.completion_tokens, s.total_tokens, s.cached_tokens) == (20, 10, 30, 4)
    assert s.failure_rate == pytest.approx(6 / 8) and joined.anomalies.clean


def test_duplicates_resolved_deterministically_success_beats_failure(tmp_path):
    df, ids = source(4)
    output = [ok("r0", "first"), ok("r0", "second"), ok("r2", "late success")]
    errors = [http_error("r1", 500), http_error("r1", 429), http_error("r2", 500)]
    joined = join(tmp_path, df, ids, output, errors)
    f = joined.frame.set_index("custom_id")
    assert f.loc["r0", "content"] == "first"  # equal rank: the first line read wins
    assert f.loc["r1", "status_code"] == 500
    assert f.loc["r2", "outcome"] == "succeeded" and f.loc["r2", "content"] == "late success"
    # The order of the files does not matter: a success still wins.
    flipped = join_results(df, ids, [ResultFiles(batch_id="b", output_path=tmp_path / "err.jsonl", error_path=tmp_path / "out.jsonl")], endpoint=CHAT)
    assert flipped.frame.set_index("custom_id").loc["r2", "content"] == "late success"
    a = joined.anomalies
    assert (a.duplicate_ids, a.duplicate_lines, sorted(a.duplicate_examples)) == (3, 3, ["r0", "r1", "r2"])
    assert a.lines_read == 6 and joined.summary.duplicate_lines == 3


def test_unknown_ids_are_reported_not_joined_including_rejected_rows(tmp_path):
    df = pd.DataFrame({"key": ["a", "b", "c"], "text": ["x", None, "z"]})
    spec = RequestSpec(model="m", input_template="{text}", key_column="key")
    manifest = build_request_files(df, spec, tmp_path / "req", profile=OPENAI, policy="quarantine")
    assert [r.custom_id for r in manifest.rejected] == ["b"]
    ids = custom_ids(df["key"])
    joined = join(tmp_path, df, ids, [ok("a"), ok("b", "should not be here"), ok("stranger"), ok("c")], rejected=manifest.rejected)
    f = joined.frame.set_index("custom_id")
    assert outcomes(joined.frame) == {"a": "succeeded", "b": "rejected", "c": "succeeded"}
    assert f.loc["b", "error_code"] == "missing_value" and "rejected before sending" in f.loc["b", "error_message"]
    assert pd.isna(f.loc["b", "content"])
    assert joined.anomalies.unknown_lines == 2 and sorted(joined.anomalies.unknown_examples) == ["b", "stranger"]


def test_rejected_rows_without_a_key_have_no_custom_id(tmp_path):
    df = pd.DataFrame({"key": ["a", None, "c", "d"], "text": ["x", "y", "z", None]}, index=[7, 7, 8, 9])
    spec = RequestSpec(model="m", input_template="{text}", key_column="key")
    manifest = build_request_files(df, spec, tmp_path / "req", profile=OPENAI, policy="quarantine")
    ids = manifest_custom_ids(manifest, df.index)
    assert ids.iloc[[0, 2, 3]].tolist() == ["a", "c", "d"] and pd.isna(ids.iloc[1]) and ids.index.equals(df.index)
    joined = join(tmp_path, df, ids, [ok("a"), ok("c")], rejected=manifest.rejected)
    assert list(joined.frame["outcome"].astype(str)) == ["succeeded", "rejected", "succeeded", "rejected"]
    assert list(joined.frame.index) == [7, 7, 8, 9]  # repeated index labels survive the join
    with pytest.raises(ValueError, match="no custom_id and are not rejected"):
        join_results(df, ids, [], endpoint=CHAT)
    with pytest.raises(ValueError, match="built from 4 rows"):
        manifest_custom_ids(manifest, df.index[:2])


def test_corrupt_lines_counted_with_line_numbers_and_the_lost_row_explained(tmp_path):
    df, ids = source(4)
    good = orjson.dumps(ok("r1"))
    output = [ok("r0"), good[: len(good) // 2], b"\x00\xff garbage", ok("r2"), b'{"custom_id": 7, "response": null}']
    joined = join(tmp_path, df, ids, output)
    f = joined.frame.set_index("custom_id")
    assert outcomes(joined.frame) == {"r0": "succeeded", "r1": "missing", "r2": "succeeded", "r3": "missing"}
    assert f.loc["r1", "error_code"] == "corrupt_line" and "line 2 of out.jsonl" in f.loc["r1", "error_message"]
    assert pd.isna(f.loc["r3", "error_code"])
    a = joined.anomalies
    assert a.corrupt_lines == 3 and [c.line_no for c in a.corrupt_examples] == [2, 3, 5]
    assert "custom_id is not a string" in a.corrupt_examples[2].message
    assert plan_retry(joined.frame).custom_ids == ["r1", "r3"]


def test_no_files_at_all_and_all_failed_without_output_file(tmp_path):
    df, ids = source(3)
    nothing = join_results(df, ids, [], endpoint=CHAT)
    assert (nothing.summary.missing, nothing.anomalies.lines_read) == (3, 0)
    all_failed = join(tmp_path, df, ids, None, [http_error(f"r{i}", 500) for i in range(3)])
    assert all_failed.summary.failed == 3 and all_failed.summary.failure_rate == 1.0
    assert all_failed.frame["content"].isna().all() and all_failed.summary.total_tokens == 0


def test_answers_the_join_cannot_use_are_invalid_output_not_crashes(tmp_path):
    df, ids = source(5)
    no_body = {"custom_id": "r1", "response": {"status_code": 200, "body": None}, "error": None}
    no_choices = ok("r2")
    no_choices["response"]["body"]["choices"] = []
    odd_tokens = ok("r3")
    odd_tokens["response"]["body"]["usage"]["prompt_tokens"] = "many"
    joined = join(tmp_path, df, ids, [ok("r0", ["not", "text"]), no_body, no_choices, odd_tokens, ok("r4")])
    f = joined.frame.set_index("custom_id")
    assert outcomes(joined.frame) == {"r0": "invalid_output", "r1": "invalid_output", "r2": "invalid_output", "r3": "succeeded", "r4": "succeeded"}
    assert set(f.loc[["r0", "r1", "r2"], "error_code"]) == {"unexpected_body"}
    assert "without a body" in f.loc["r1", "error_message"] and "not text" in f.loc["r0", "error_message"]
    assert pd.isna(f.loc["r3", "prompt_tokens"]) and f.loc["r3", "completion_tokens"] == 5  # only the odd field is lost
    assert plan_retry(joined.frame).custom_ids == [] and plan_retry(joined.frame, retry_invalid_output=True).custom_ids == ["r0", "r1", "r2"]


def test_inputs_that_cannot_be_joined_raise_clearly(tmp_path):
    df, ids = source(3)
    with pytest.raises(ValueError, match="aligned"):
        join_results(df, ids.iloc[:2], [], endpoint=CHAT)
    with pytest.raises(ValueError, match="aligned"):
        join_results(df, ids.set_axis([5, 6, 7]), [], endpoint=CHAT)
    with pytest.raises(ValueError, match="not unique.*r0"):
        join_results(df, pd.Series(["r0", "r0", "r2"]), [], endpoint=CHAT)
    with pytest.raises(ValueError, match="must be strings"):
        join_results(df, pd.Series([1, 2, 3]), [], endpoint=CHAT)
    with pytest.raises(ValueError, match=r"\['content', 'status_code'\] clash"):
        join_results(df.assign(content="x", status_code=1), ids, [], endpoint=CHAT)
    with pytest.raises(ValueError, match="not one of"):
        join_results(df, ids, [], endpoint="/v1/images")
    with pytest.raises(ValueError, match="appears twice"):
        join_results(df, ids, [ResultFiles(batch_id="b"), ResultFiles(batch_id="b")], endpoint=CHAT)
    with pytest.raises(ValueError, match="answers with text"):
        join_results(df, ids, [], endpoint="/v1/embeddings", output_model=Verdict)
    # A custom_id column that only repeats the ids is fine.
    same = join_results(df.assign(custom_id=ids), ids, [], endpoint=CHAT)
    assert list(same.frame.columns[:3]) == ["key", "text", "custom_id"]


# ---- fault plans of the local service -------------------------------------------------------


def test_partial_failures_429_500_400(local_service, tmp_path):
    svc = local_service()
    df, spec = texts(200), chat_spec()
    run = Run(svc, tmp_path, "a").submit(df, spec, faults=FaultPlan(seed=3, row_failures={429: 0.15, 500: 0.1, 400: 0.1}))
    batch = run.batches[0]
    assert batch.status == "completed" and batch.request_counts.failed > 0
    f = run.join(df, spec).frame
    assert count(f, "succeeded") == batch.request_counts.completed and count(f, "failed") == batch.request_counts.failed
    statuses = f.loc[f["outcome"] == "failed", "status_code"].value_counts().to_dict()
    assert set(statuses) == {429, 500, 400} and sum(statuses.values()) == batch.request_counts.failed
    assert f.loc[f["status_code"] == 429, "error_code"].eq("rate_limit_exceeded").all()
    ok = f[f["outcome"] == "succeeded"]
    assert ok["content"].str.startswith("Local reply to: Review number").all() and (ok["finish_reason"] == "stop").all()
    assert (ok["total_tokens"] == ok["prompt_tokens"] + ok["completion_tokens"]).all() and (ok["status_code"] == 200).all()
    assert f.loc[f["outcome"] == "failed", ["content", "prompt_tokens"]].isna().all().all()
    assert set(f["batch_id"].astype(str)) == {batch.id}

    plan = plan_retry(f)
    assert len(plan.custom_ids) == statuses[429] + statuses[500]
    assert plan.retry_reasons == {"http_429": statuses[429], "http_500": statuses[500]} and plan.kept_reasons == {"http_400": statuses[400]}


def test_expiry_keeps_finished_rows_and_expires_the_rest(local_service, tmp_path):
    svc = local_service()
    df, spec = texts(120), chat_spec()
    run = Run(svc, tmp_path, "a").submit(df, spec, faults=FaultPlan(expire_after=0.4))
    assert run.batches[0].status == "expired"
    joined_ = run.join(df, spec)
    f = joined_.frame
    assert count(f, "succeeded") == math.ceil(0.4 * 120) and count(f, "expired") == 120 - math.ceil(0.4 * 120)
    assert f.loc[f["outcome"] == "expired", "error_code"].eq("batch_expired").all()
    assert plan_retry(f).retry_reasons == {"expired": 72}


def test_cancel_returns_partial_results(local_service, tmp_path):
    svc = local_service()
    df, spec = texts(150), chat_spec()
    run = Run(svc, tmp_path, "a")

    def cancel_midway(batch: Any) -> None:
        run.wait(batch.id, ("in_progress",), until=lambda b: b.request_counts.completed >= 10)
        run.client.batches.cancel(batch.id)

    run.submit(df, spec, faults=FaultPlan(row_delay=0.01), while_running=cancel_midway)
    batch = run.batches[0]
    assert batch.status == "cancelled"
    f = run.join(df, spec).frame
    assert count(f, "succeeded") >= 10 and count(f, "cancelled") >= 1
    assert count(f, "succeeded") + count(f, "cancelled") == 150 == batch.request_counts.completed + batch.request_counts.failed
    assert f.loc[f["outcome"] == "cancelled", "error_code"].eq("batch_cancelled").all()
    assert len(plan_retry(f).custom_ids) == count(f, "cancelled")


@pytest.mark.parametrize(
    ("plan", "expect"),
    [
        pytest.param(FaultPlan(seed=1, corrupt_lines=3), {"succeeded": 57, "missing": 3, "corrupt_lines": 3}, id="corrupt"),
        pytest.param(FaultPlan(seed=2, duplicate_lines=4), {"succeeded": 60, "duplicate_lines": 4}, id="duplicates"),
        pytest.param(FaultPlan(seed=3, unknown_lines=3), {"succeeded": 60, "unknown_lines": 3}, id="unknown"),
        pytest.param(FaultPlan(seed=4, missing_rows=5), {"succeeded": 55, "missing": 5}, id="missing"),
        pytest.param(FaultPlan(seed=5, corrupt_lines=2, duplicate_lines=2, unknown_lines=2, missing_rows=2),
                     {"succeeded": 56, "missing": 4, "corrupt_lines": 2, "duplicate_lines": 2, "unknown_lines": 2}, id="all-at-once"),  # fmt: skip
    ],
)
def test_odd_output_files_lose_no_row(local_service, tmp_path, plan, expect):
    svc = local_service()
    df, spec = texts(60), chat_spec()
    run = Run(svc, tmp_path, "a").submit(df, spec, faults=plan)
    result = run.join(df, spec)
    f, a = result.frame, result.anomalies
    got = {"succeeded": count(f, "succeeded"), "missing": count(f, "missing"), "corrupt_lines": a.corrupt_lines,
           "duplicate_lines": a.duplicate_lines, "unknown_lines": a.unknown_lines}  # fmt: skip
    assert {k: got[k] for k in expect} == expect
    assert a.duplicate_ids == a.duplicate_lines and all(e.startswith("unknown-") for e in a.unknown_examples)
    if plan.corrupt_lines:
        lost = f[f["error_code"] == "corrupt_line"]
        assert len(lost) == plan.corrupt_lines and lost["outcome"].eq("missing").all()
        assert sorted(c.custom_id for c in a.corrupt_examples) == sorted(lost["custom_id"])
    if plan.missing_rows:
        assert f["error_message"].str.contains("absent from both").sum() == plan.missing_rows
    assert count(f, "missing") == plan.corrupt_lines + plan.missing_rows
    assert sorted(plan_retry(f).custom_ids) == sorted(f.loc[f["outcome"] == "missing", "custom_id"])


def test_all_failed_batch_has_no_output_file(local_service, tmp_path):
    svc = local_service()
    df, spec = texts(30), chat_spec()
    run = Run(svc, tmp_path, "a").submit(df, spec, faults=FaultPlan(row_failures={500: 1.0}))
    assert run.batches[0].status == "completed" and run.batches[0].output_file_id is None
    assert run.files[0].output_path is None and run.files[0].error_path is not None
    result = run.join(df, spec)
    assert result.summary.failed == 30 and result.summary.failure_rate == 1.0 and result.summary.total_tokens == 0


@pytest.mark.parametrize(
    "plan", [FaultPlan(no_output_file=True), FaultPlan(validation_error="token_limit_exceeded")], ids=["output-file-lost", "validation-failed"]
)
def test_batch_without_any_result_leaves_every_row_missing_and_retried(local_service, tmp_path, plan):
    svc = local_service()
    df, spec = texts(25), chat_spec()
    run = Run(svc, tmp_path, "a").submit(df, spec, faults=plan)
    assert run.files[0].output_path is None and run.files[0].error_path is None
    f = run.join(df, spec).frame
    assert count(f, "missing") == 25
    assert plan_retry(f).retry_reasons == {"missing": 25}


def test_several_shards_and_rejected_rows_in_one_join(local_service, tmp_path):
    svc = local_service()
    df, spec = texts(100), chat_spec()
    df.loc[[7, 42], "text"] = None  # quarantined: never sent
    run = Run(svc, tmp_path, "a").submit(df, spec, faults=FaultPlan(seed=9, row_failures={429: 0.2}), policy="quarantine", max_requests_per_shard=40)
    assert len(run.batches) == 3
    f = run.join(df, spec).frame
    assert count(f, "rejected") == 2 and set(f.loc[f["outcome"] == "rejected", "doc"]) == {"doc-007", "doc-042"}
    assert f.loc[f["outcome"] == "rejected", "error_code"].eq("missing_value").all()
    assert count(f, "succeeded") + count(f, "failed") == 98
    assert count(f, "failed") == sum(b.request_counts.failed for b in run.batches)
    by_batch = f.dropna(subset=["batch_id"]).groupby("batch_id", observed=True).size()
    assert sorted(by_batch.to_dict().values()) == sorted(s.rows for s in run.manifest.shards)
