"""Attempts merged to one final outcome per row: a success wins, then the latest result."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from batch_pipelines.providers.base import ResultFiles
from batch_pipelines.requests import RequestSpec, build_request_files, custom_ids
from batch_pipelines.results import OUTCOMES, build_retry_requests, join_results, manifest_custom_ids, merge_attempts, plan_retry, summarize
from batch_pipelines_tests.support.request_files import CHAT, write_lines
from batch_pipelines_tests.support.result_files import OPENAI, http_error, join, no_answer, ok, outcomes


def test_retry_requests_keep_custom_ids_and_attempts_merge_to_final_outcomes(tmp_path):
    df = pd.DataFrame({"doc": ["d0", "d1", "d2", "d3", "d4"], "text": ["a", "b", "c", "d", "e"]})
    spec = RequestSpec(model="gpt-4o-mini", input_template="Say {text}", key_column="doc")
    ids = custom_ids(df["doc"])
    first = join(tmp_path, df, ids, [ok("d0")], [http_error("d1", 500), http_error("d2", 400), no_answer("d3", "batch_expired")]).frame
    plan = plan_retry(first)
    assert plan.custom_ids == ["d1", "d3", "d4"]
    manifest = build_retry_requests(plan, df, ids, spec, tmp_path / "retry", profile=OPENAI)
    assert manifest.attempt == 2 and all(s.attempt == 2 for s in manifest.shards)
    sent = [orjson.loads(line) for s in manifest.shards for line in s.path.read_bytes().splitlines()]
    assert [line["custom_id"] for line in sent] == ["d1", "d3", "d4"]
    assert [line["body"]["messages"][0]["content"] for line in sent] == ["Say b", "Say d", "Say e"]

    subset = df.iloc[[1, 3, 4]]
    answers = ResultFiles(batch_id="batch_2", output_path=write_lines(tmp_path / "o2.jsonl", [ok("d1", "again"), ok("d4", "now")]))
    second = join_results(subset, ids.iloc[[1, 3, 4]], [answers], endpoint=CHAT, attempt=2).frame
    merged = merge_attempts([first, second])
    assert list(merged.index) == list(df.index) and list(merged["custom_id"]) == list(ids)
    assert outcomes(merged) == {"d0": "succeeded", "d1": "succeeded", "d2": "failed", "d3": "expired", "d4": "succeeded"}
    assert list(merged["attempt"]) == [1, 2, 1, 1, 2]
    assert list(merged["batch_id"].astype(str)) == ["batch_1", "batch_2", "batch_1", "batch_1", "batch_2"]
    assert merged.loc[1, "content"] == "again"
    assert merged.loc[3, "error_code"] == "batch_expired"  # d3 missing in attempt 2: attempt 1's result stays
    assert summarize(merged).succeeded == 3 and len(merged) == len(df)

    # A success is never replaced by a later failure.
    third = second.assign(outcome=pd.Categorical(["failed", "failed", "failed"], categories=list(OUTCOMES)), attempt=np.int16(3))
    assert outcomes(merge_attempts([first, second, third]))["d1"] == "succeeded"
    with pytest.raises(ValueError, match="no rows"):
        build_retry_requests(plan_retry(merged.iloc[:1]), df, ids, spec, tmp_path / "none", profile=OPENAI)


def test_rows_rejected_without_a_custom_id_or_for_a_duplicate_key_survive_a_retry_round(tmp_path):
    df = pd.DataFrame({"doc": ["d0", None, "d2", "d3", "d3", "d5"], "text": list("abcdef")})
    spec = RequestSpec(model="gpt-4o-mini", input_template="Say {text}", key_column="doc")
    manifest = build_request_files(df, spec, tmp_path / "attempt1", profile=OPENAI, policy="quarantine")
    ids = manifest_custom_ids(manifest, df.index)
    assert [r.row for r in manifest.rejected] == [1, 3, 4] and ids.iloc[3] == ids.iloc[4] == "d3"
    first = join(tmp_path, df, ids, [ok("d0")], [http_error("d2", 500), ok("d3")], rejected=manifest.rejected)
    assert first.frame["outcome"].astype(str).tolist() == ["succeeded", "rejected", "failed", "rejected", "rejected", "missing"]
    assert first.anomalies.unknown_lines == 1  # the line for d3, a rejected row's id
    plan = plan_retry(first.frame)
    assert plan.custom_ids == ["d2", "d5"] and plan.kept_reasons == {"rejected": 3}

    retry = build_retry_requests(plan, df, ids, spec, tmp_path / "attempt2", profile=OPENAI, policy="quarantine")
    subset = df.iloc[[2, 5]]
    answers = ResultFiles(batch_id="batch_2", output_path=write_lines(tmp_path / "o2.jsonl", [ok("d2"), ok("d5")]))
    second = join_results(subset, manifest_custom_ids(retry, subset.index), [answers], endpoint=CHAT, attempt=2).frame
    merged = merge_attempts([first.frame, second])
    assert list(merged.index) == list(df.index) and len(merged) == 6
    assert merged["outcome"].astype(str).tolist() == ["succeeded", "rejected", "succeeded", "rejected", "rejected", "succeeded"]
    assert plan_retry(merged).empty
