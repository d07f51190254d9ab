"""Results joined from files the local service really produced under its fault plans.

Every batch goes the whole way: request files built by :mod:`batch_pipelines.requests`, uploaded and
run through the official openai SDK over HTTP, result files downloaded, then joined. Each test
asserts that the outcome counts add up to the number of source rows (``joined()`` checks it for
every join) and what the fault plan must have caused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import openai
import pandas as pd
import pytest
from pydantic import BaseModel

from batch_pipelines.local_service import FAULTS_METADATA_KEY, FaultPlan
from batch_pipelines.profiles import ProviderProfile, get_profile
from batch_pipelines.providers.base import ResultFiles
from batch_pipelines.requests import RequestManifest, RequestSpec, build_request_files, custom_ids
from batch_pipelines.results import (
    OUTCOMES,
    JoinedResults,
    Prices,
    build_retry_requests,
    join_results,
    manifest_custom_ids,
    merge_attempts,
    plan_retry,
    summarize,
)

OPENAI = get_profile("openai")
TERMINAL = ("completed", "failed", "expired", "cancelled")


def texts(n: int) -> pd.DataFrame:
    return pd.DataFrame({"doc": [f"doc-{i:03d}" for i in range(n)], "text": [f"Review number {i}: it was fine." for i in range(n)]})


def chat_spec(**kw: Any) -> RequestSpec:
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("messages", [{"role": "system", "content": "Classify the review."}, {"role": "user", "content": "{text}"}])
    return RequestSpec(key_column="doc", **kw)


class Run:
    """One submission of a table: its manifest, the batches as finished and their result files."""

    def __init__(self, svc: Any, tmp_path: Path, name: str) -> None:
        self.client = openai.OpenAI(api_key=svc.api_key, base_url=svc.base_url, max_retries=0)
        self.dir = tmp_path / name
        self.batches: list[Any] = []
        self.files: list[ResultFiles] = []
        self.manifest: RequestManifest | None = None

    def submit(
        self,
        df: pd.DataFrame,
        spec: RequestSpec,
        *,
        faults: FaultPlan | None = None,
        profile: ProviderProfile = OPENAI,
        while_running: Callable[[Any], None] | None = None,
        **build: Any,
    ) -> Run:
        self.manifest = build_request_files(df, spec, self.dir / "requests", profile=profile, **build)
        metadata = {FAULTS_METADATA_KEY: faults.to_json()} if faults is not None else None
        for shard in self.manifest.shards:
            uploaded = self.client.files.create(file=shard.path, purpose="batch")
            batch = self.client.batches.create(input_file_id=uploaded.id, endpoint=spec.endpoint, completion_window="24h", metadata=metadata)
            if while_running is not None:
                while_running(batch)
            batch = self.wait(batch.id, TERMINAL)
            self.batches.append(batch)
            self.files.append(self.download(batch))
        return self

    def wait(self, batch_id: str, statuses: tuple[str, ...], until: Callable[[Any], bool] = lambda b: True, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            batch = self.client.batches.retrieve(batch_id)
            if batch.status in statuses and until(batch):
                return batch
            assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status} after {timeout}s"
            time.sleep(0.02)

    def download(self, batch: Any) -> ResultFiles:
        paths = {}
        for kind, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id)):
            if file_id is not None:
                paths[kind] = self.dir / f"{batch.id}.{kind}.jsonl"
                self.client.files.content(file_id).write_to_file(paths[kind])
        return ResultFiles(batch_id=batch.id, output_path=paths.get("output"), error_path=paths.get("error"))

    def join(self, df: pd.DataFrame, spec: RequestSpec, **kw: Any) -> JoinedResults:
        assert self.manifest is not None
        kw.setdefault("rejected", self.manifest.rejected)
        kw.setdefault("attempt", self.manifest.attempt)
        return joined(df, manifest_custom_ids(self.manifest, df.index), spec, self.files, **kw)


def joined(df: pd.DataFrame, ids: pd.Series, spec: RequestSpec, files: list[ResultFiles], **kw: Any) -> JoinedResults:
    assert ids.dropna().equals(custom_ids(df[spec.key_column]).loc[ids.dropna().index])  # the manifest's ids are the keys'
    result = join_results(df, ids, files, endpoint=spec.endpoint, **kw)
    counts = result.frame["outcome"].value_counts()
    assert int(counts.sum()) == len(df) == result.summary.rows
    assert sum(getattr(result.summary, o) for o in OUTCOMES) == len(df)
    assert result.frame["custom_id"].is_unique and list(result.frame["doc"]) == list(df["doc"])
    return result


def count(frame: pd.DataFrame, outcome: str) -> int:
    return int((frame["outcome"] == outcome).sum())


# ---- fault plans ------------------------------------------------------------------------------


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


# ---- retry across attempts --------------------------------------------------------------------


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


# ---- content, structured output, cost ---------------------------------------------------------


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float
    reason: str


class StrictSentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float
    reason: Literal["because"]  # the service answers "local": a real mismatch


def test_structured_output_from_the_service_validates_or_is_invalid_output(local_service, tmp_path):
    svc = local_service()
    df, spec = texts(40), chat_spec(output_model=Sentiment)
    run = Run(svc, tmp_path, "a").submit(df, spec, faults=FaultPlan(seed=2, row_failures={500: 0.1}))
    f = run.join(df, spec, output_model=Sentiment).frame
    ok = f[f["outcome"] == "succeeded"]
    assert count(f, "succeeded") + count(f, "failed") == 40 and len(ok) > 20
    assert set(ok["output_label"]) <= {"positive", "negative", "neutral"} and (ok["output_reason"] == "local").all()
    assert str(f["output_confidence"].dtype) == "Float64"

    strict = run.join(df, spec, output_model=StrictSentiment).frame
    assert count(strict, "invalid_output") == len(ok) and count(strict, "failed") == count(f, "failed")
    bad = strict[strict["outcome"] == "invalid_output"]
    assert bad["error_message"].str.contains("does not match StrictSentiment: reason").all() and bad["output_label"].isna().all()
    assert plan_retry(strict, retry_invalid_output=True).retry_reasons["invalid_output"] == len(ok)


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        pytest.param(chat_spec(endpoint="/v1/embeddings", model="text-embedding-3-small", messages=None, input_template="{text}"),
                     lambda f: f["embedding"].map(len).eq(16).all() and f["prompt_tokens"].gt(0).all(), id="embeddings"),
        pytest.param(chat_spec(endpoint="/v1/responses", model="gpt-4o-mini", messages=None, input_template="{text}"),
                     lambda f: f["content"].str.contains("Review number").all() and f["finish_reason"].eq("completed").all(), id="responses"),
        pytest.param(chat_spec(endpoint="/v1/completions", model="gpt-3.5-turbo-instruct", messages=None, input_template="{text}"),
                     lambda f: f["content"].str.startswith(" Local completion of: Review").all() and f["total_tokens"].gt(0).all(), id="completions"),
        pytest.param(chat_spec(endpoint="/v1/moderations", model="omni-moderation-latest", messages=None, input_template="{text}"),
                     lambda f: f["flagged"].eq(False).all() and f["moderation"].map(lambda m: "category_scores" in m).all(), id="moderations"),
    ],
)  # fmt: skip
def test_content_of_each_endpoint(local_service, tmp_path, spec, check):
    svc = local_service()
    df = texts(12)
    f = Run(svc, tmp_path, "a").submit(df, spec).join(df, spec).frame
    assert count(f, "succeeded") == 12 and check(f)


def test_summary_and_cost_match_the_service_usage(local_service, tmp_path):
    svc = local_service(profile="moonshot")
    df, spec = texts(50), chat_spec(model="kimi-k2.5")
    moonshot = get_profile("moonshot")
    prices = Prices(input_per_million=0.6, output_per_million=2.5)
    run = Run(svc, tmp_path, "a").submit(df, spec, profile=moonshot, faults=FaultPlan(seed=4, row_failures={429: 0.2}))
    result = run.join(df, spec, profile=moonshot, prices=prices)
    s = result.summary
    f = result.frame
    assert s.prompt_tokens == int(f["prompt_tokens"].sum()) > 0 and s.completion_tokens == int(f["completion_tokens"].sum()) > 0
    assert s.total_tokens == s.prompt_tokens + s.completion_tokens and s.cached_tokens == 0
    assert s.cost == pytest.approx((s.prompt_tokens * 0.6 + s.completion_tokens * 2.5) / 1e6 * (1 - 0.4))
    assert s.failure_rate == pytest.approx(s.failed / 50) and s.failed == run.batches[0].request_counts.failed
    assert summarize(f, profile=moonshot, prices=prices) == s.model_copy(update={"unknown_lines": 0, "duplicate_lines": 0, "corrupt_lines": 0})
    assert set(s.to_metadata()) >= {"rows", "succeeded", "failed", "cost", "failure_rate", "total_tokens"}
