"""Succeeded answers validated as the user's pydantic model, or invalid_output saying why."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel

from batch_pipelines.local_service import FaultPlan
from batch_pipelines.results import plan_retry
from batch_pipelines_tests.support.result_files import Run, Verdict, chat_spec, count, http_error, join, ok, outcomes, source, texts


def test_structured_output_validated_and_expanded_into_columns(tmp_path):
    df, ids = source(6)
    df["label"] = "ground truth"  # a source column named like a field: the output_ prefix keeps both
    output = [
        ok("r0", '{"mood": "positive", "score": 0.9, "tags": ["a", "b"], "label": "keep"}'),
        ok("r1", '{"mood": "negative", "score": 0.1, "tags": [], "label": "drop"}'),
        ok("r2", '{"mood": "meh", "score": 2, "tags": [], "label": "keep"}'),
        ok("r3", '{"mood": "positive", "score": 0.5, "tags": [', finish="length"),
        ok("r4", None),
    ]
    joined = join(tmp_path, df, ids, output, [http_error("r5", 500)], output_model=Verdict)
    f = joined.frame.set_index("custom_id")
    assert outcomes(joined.frame) == {"r0": "succeeded", "r1": "succeeded", "r2": "invalid_output",
                                      "r3": "invalid_output", "r4": "invalid_output", "r5": "failed"}  # fmt: skip
    expanded = ["output_mood", "output_score", "output_tags", "output_label", "label"]
    assert list(f.loc["r0", expanded]) == ["positive", 0.9, ["a", "b"], "keep", "ground truth"]
    assert str(f["output_mood"].dtype) == "str" and str(f["output_score"].dtype) == "Float64"
    assert f.loc[["r2", "r3", "r4", "r5"], "output_mood"].isna().all()
    assert set(f.loc[["r2", "r3", "r4"], "error_code"]) == {"invalid_output"}
    assert re.search(r"does not match Verdict: mood: .*; score: ", f.loc["r2", "error_message"])
    assert f.loc["r3", "error_message"].startswith("output is not valid JSON (finish_reason=length")
    assert "no text to validate" in f.loc["r4", "error_message"]
    assert f.loc["r5", "error_code"] is not None and f.loc["r5", "status_code"] == 500
    assert joined.summary.invalid_output == 3 and joined.summary.prompt_tokens == 50  # invalid answers were billed too


# ---- through the local service --------------------------------------------------------------


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
