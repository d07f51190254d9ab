"""Retry plans: only what failed for a reason that may pass is sent again, under the next attempt number."""

from __future__ import annotations

import numpy as np

from batch_pipelines.local_service import FaultPlan
from batch_pipelines.providers.retry_policy import QUOTA_EXHAUSTED_CODES
from batch_pipelines.requests import custom_ids
from batch_pipelines.results import build_retry_requests, merge_attempts, plan_retry
from batch_pipelines_tests.support.result_files import OPENAI, Run, chat_spec, count, http_error, join, no_answer, source, texts
from batch_pipelines_tests.support.waiting import TERMINAL


def test_retry_plan_retries_transient_failures_only(tmp_path):
    df, ids = source(10)
    errors = [
        http_error("r0", 429, "rate_limit_exceeded"),
        http_error("r1", 500),
        http_error("r2", 503),
        http_error("r3", 400),
        http_error("r4", 404),
        http_error("r5", 429, "insufficient_quota", "You exceeded your current quota"),
        no_answer("r6", "request_timeout"),
        no_answer("r7", "batch_expired"),
        no_answer("r8", "some_other_failure"),
    ]
    frame = join(tmp_path, df, ids, [], errors).frame  # r9 is missing
    plan = plan_retry(frame)
    assert plan.attempt == 2
    assert plan.custom_ids == ["r0", "r1", "r2", "r6", "r7", "r9"]
    assert plan.retry_reasons == {"http_429": 1, "http_500": 1, "http_503": 1, "request_timeout": 1, "expired": 1, "missing": 1}
    assert plan.kept_reasons == {"http_400": 1, "http_404": 1, "http_429": 1, "some_other_failure": 1}
    exhausted = plan_retry(frame.assign(attempt=np.int16(3)), max_attempts=3)
    assert exhausted.empty and exhausted.kept_reasons["attempts_exhausted"] == 6 and exhausted.attempt == 4


def test_a_429_for_an_exhausted_quota_is_not_retried_one_for_a_rate_limit_is(tmp_path):
    """The transport's rule (providers.retry_policy): waiting cannot bring back money that ran out."""
    df, ids = source(4)
    errors = [
        http_error("r0", 429, "billing_hard_limit_reached", "You reached your hard limit"),
        http_error("r1", 429, "rate_limit_exceeded", "slow down"),
        http_error("r2", 429, None, "no code"),
        http_error("r3", 500, "billing_hard_limit_reached"),  # the code only tells on a 429
    ]
    plan = plan_retry(join(tmp_path, df, ids, [], errors).frame)
    assert plan.custom_ids == ["r1", "r2", "r3"]
    assert plan.retry_reasons == {"http_429": 2, "http_500": 1} and plan.kept_reasons == {"http_429": 1}
    for code in QUOTA_EXHAUSTED_CODES:
        df, ids = source(1)
        assert plan_retry(join(tmp_path, df, ids, [], [http_error("r0", 429, code)]).frame).empty


# ---- through the local service --------------------------------------------------------------


def test_retry_plan_through_the_service_until_every_row_is_final(local_service, tmp_path):
    svc = local_service()
    df, spec = texts(80), chat_spec()
    ids = custom_ids(df["doc"])
    first = Run(svc, tmp_path, "attempt1").submit(df, spec, faults=FaultPlan(seed=11, row_failures={429: 0.25, 503: 0.1, 400: 0.1}, missing_rows=2))
    f1 = first.join(df, spec).frame
    plan = plan_retry(f1)
    bad_input = int((f1["status_code"] == 400).sum())
    assert plan.attempt == 2 and len(plan.custom_ids) == 80 - count(f1, "succeeded") - bad_input

    second = Run(svc, tmp_path, "attempt2")
    manifest = build_retry_requests(plan, df, ids, spec, second.dir / "requests", profile=OPENAI)
    assert manifest.attempt == 2 and set(manifest.read_ids()["custom_id"]) == set(plan.custom_ids)
    second.manifest = manifest
    for shard in manifest.shards:  # submitted like any other request file, no faults this time
        uploaded = second.client.files.create(file=shard.path, purpose="batch")
        batch = second.wait(second.client.batches.create(input_file_id=uploaded.id, endpoint=spec.endpoint, completion_window="24h").id, TERMINAL)
        second.files.append(second.download(batch))
    subset = df[ids.isin(plan.custom_ids)]
    f2 = second.join(subset, spec).frame
    assert count(f2, "succeeded") == len(plan.custom_ids) and (f2["attempt"] == 2).all()

    merged = merge_attempts([f1, f2])
    assert list(merged["doc"]) == list(df["doc"])
    assert count(merged, "succeeded") == 80 - bad_input and count(merged, "failed") == bad_input
    assert set(merged.loc[merged["attempt"] == 2, "custom_id"]) == set(plan.custom_ids)
    assert merged["batch_id"].nunique() == 2
    final = plan_retry(merged)
    assert final.empty and final.attempt == 3 and final.kept_reasons == {"http_400": bad_input}
