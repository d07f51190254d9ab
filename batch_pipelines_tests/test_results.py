"""Results on small hand-written files: line formats, the join's accounting rules, structured output,
content per endpoint, summary and cost, retry plans and merging attempts.

The same rules on files the local service really produced under its fault plans are in
``results/test_service_results.py``.
"""

from __future__ import annotations

import base64
import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import orjson
import pandas as pd
import pytest
from pydantic import BaseModel, Field

from batch_pipelines.profiles import get_profile
from batch_pipelines.providers.base import ResultFiles
from batch_pipelines.requests import RequestSpec, build_request_files, custom_ids
from batch_pipelines.results import (
    OUTCOMES,
    CorruptLine,
    Prices,
    ResultLine,
    build_retry_requests,
    iter_result_lines,
    join_results,
    manifest_custom_ids,
    merge_attempts,
    plan_retry,
    summarize,
)

CHAT = "/v1/chat/completions"
OPENAI = get_profile("openai")
MOONSHOT = get_profile("moonshot")


# ---- lines as providers write them ------------------------------------------------------------


def ok(cid: str, content: Any = "fine", *, prompt: int = 10, completion: int = 5, cached: int | None = None, finish: str = "stop") -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": usage,
    }
    return {"id": f"batch_req_{cid}", "custom_id": cid, "response": {"status_code": 200, "request_id": "r", "body": body}, "error": None}


def http_error(cid: str, status: int, code: str | None = None, message: str = "no", type_: str = "invalid_request_error") -> dict[str, Any]:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return {"id": f"batch_req_{cid}", "custom_id": cid, "response": {"status_code": status, "request_id": "r", "body": body}, "error": None}


def no_answer(cid: str, code: str, message: str = "not run") -> dict[str, Any]:
    return {"id": f"batch_req_{cid}", "custom_id": cid, "response": None, "error": {"code": code, "message": message}}


def write(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines))
    return path


def source(n: int) -> tuple[pd.DataFrame, pd.Series]:
    df = pd.DataFrame({"key": [f"r{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]})
    return df, custom_ids(df["key"])


def join(tmp_path: Path, df: pd.DataFrame, ids: pd.Series, output: list[Any] | None, errors: list[Any] | None = None, **kw: Any):
    files = ResultFiles(
        batch_id="batch_1",
        output_path=write(tmp_path / "out.jsonl", output) if output is not None else None,
        error_path=write(tmp_path / "err.jsonl", errors) if errors is not None else None,
    )
    kw.setdefault("endpoint", CHAT)
    joined = join_results(df, ids, [files], **kw)
    assert joined.summary.rows == len(df) == sum(getattr(joined.summary, o) for o in OUTCOMES)
    assert joined.frame["outcome"].value_counts().sum() == len(df)
    return joined


def outcomes(frame: pd.DataFrame) -> dict[str, str]:
    return dict(zip(frame["custom_id"], frame["outcome"].astype(str)))


# ---- reading ----------------------------------------------------------------------------------


def test_iter_result_lines_normalizes_every_kind_and_keeps_reading_past_a_corrupt_line(tmp_path):
    path = write(
        tmp_path / "mixed.jsonl",
        [ok("a", "hi"), http_error("b", 429, "rate_limit_exceeded", "slow down"), b'{"id": "x", "custom_id": "c", "respo',
         b"", no_answer("d", "batch_expired"), no_answer("e", "request_timeout"), b"[1, 2]", ok("f"),
         {"custom_id": "g", "response": {"status_code": 502, "body": "Bad gateway"}, "error": None}],
    )  # fmt: skip
    got = list(iter_result_lines(path))
    records = [x for x in got if isinstance(x, ResultLine)]
    corrupt = [x for x in got if isinstance(x, CorruptLine)]
    assert [(r.line_no, r.custom_id, r.outcome, r.status_code, r.error_code) for r in records] == [
        (1, "a", "succeeded", 200, None),
        (2, "b", "failed", 429, "rate_limit_exceeded"),
        (5, "d", "expired", None, "batch_expired"),
        (6, "e", "failed", None, "request_timeout"),
        (8, "f", "succeeded", 200, None),
        (9, "g", "failed", 502, None),  # an HTTP failure without an error object keeps its status
    ]
    assert "Bad gateway" in records[5].error_message
    assert records[0].body["choices"][0]["message"]["content"] == "hi"
    assert records[1].error_message == "slow down" and records[1].body is None
    assert [(c.line_no, c.custom_id) for c in corrupt] == [(3, "c"), (7, None)]  # the blank line 4 is no record
    assert "not valid JSON" in corrupt[0].message


def _variant(cid: str, change: Any) -> dict[str, Any]:
    line = ok(cid, cached=3)
    change(line, line["response"], line["response"]["body"])
    return line


# Success lines as a provider might bend them: every one the typed road must either read exactly
# as the general road does or hand over to it.
_BENT_LINES: list[Any] = [
    ok("plain"),
    ok("cached", cached=7),
    ok("null-content", None, finish="content_filter"),
    ok("unicode", "caf\u00e9 \u2603 \"quoted\""),
    _variant("usage-null", lambda line, r, b: b.update(usage=None)),
    _variant("usage-empty", lambda line, r, b: b.update(usage={})),
    _variant("usage-absent", lambda line, r, b: b.pop("usage")),
    _variant("usage-zero", lambda line, r, b: b.update(usage=0)),
    _variant("usage-list", lambda line, r, b: b.update(usage=[1])),
    _variant("details-null", lambda line, r, b: b["usage"].update(prompt_tokens_details=None)),
    _variant("details-text", lambda line, r, b: b["usage"].update(prompt_tokens_details="none")),
    _variant("tokens-text", lambda line, r, b: b["usage"].update(prompt_tokens="12")),
    _variant("tokens-float", lambda line, r, b: b["usage"].update(completion_tokens=5.0)),
    _variant("tokens-bool", lambda line, r, b: b["usage"].update(total_tokens=True)),
    _variant("tokens-huge", lambda line, r, b: b["usage"].update(total_tokens=2**40)),
    _variant("finish-number", lambda line, r, b: b["choices"][0].update(finish_reason=1)),
    _variant("finish-absent", lambda line, r, b: b["choices"][0].pop("finish_reason")),
    _variant("content-number", lambda line, r, b: b["choices"][0]["message"].update(content=7)),
    _variant("content-absent", lambda line, r, b: b["choices"][0]["message"].pop("content")),
    _variant("message-null", lambda line, r, b: b["choices"][0].update(message=None)),
    _variant("choices-empty", lambda line, r, b: b.update(choices=[])),
    _variant("choices-null", lambda line, r, b: b.update(choices=None)),
    _variant("second-choice-odd", lambda line, r, b: b["choices"].append({"message": {"content": 1}})),
    _variant("body-null", lambda line, r, b: r.update(body=None)),
    _variant("body-list", lambda line, r, b: r.update(body=[b])),
    _variant("status-float", lambda line, r, b: r.update(status_code=200.0)),
    _variant("status-204", lambda line, r, b: r.update(status_code=204)),
    _variant("status-text", lambda line, r, b: r.update(status_code="200")),
    _variant("status-500", lambda line, r, b: r.update(status_code=500)),
    _variant("response-null", lambda line, r, b: line.update(response=None, error={"code": "batch_expired", "message": "late"})),
    _variant("custom-id-number", lambda line, r, b: line.update(custom_id=5)),
    _variant("custom-id-absent", lambda line, r, b: line.pop("custom_id")),
    http_error("http-429", 429, "rate_limit_exceeded"),
    no_answer("timeout", "request_timeout"),
    b'{"custom_id": "cut", "response": {"status_code": 200, "body": {"choices": [{"mess',
    b"[1, 2]",
    b"",
    b'{"custom_id": "huge-ignored", "response": {"status_code": 200, "body": {"n": 123456789012345678901234567890, "choices": [{"message": {"content": "x"}}]}}}',
    b'{"custom_id": "dup-key", "custom_id": "dup-key-2", "response": {"status_code": 200, "body": {"choices": [{"message": {"content": "x", "content": "y"}}]}}}',
]


def test_the_typed_road_for_chat_lines_changes_no_answer():
    """The typed decoder (msgspec) reads the common line fast; every line gets what the general road gives."""
    from batch_pipelines._result_lines import _TYPED, _chat_fields, _Envelope, _parse_openai

    raws = [x if isinstance(x, bytes) else orjson.dumps(x) for x in _BENT_LINES]
    typed, general = _Envelope(width=6), _Envelope(width=6)
    assert _parse_openai(raws, 0, typed, _chat_fields, _TYPED[CHAT]) == _parse_openai(raws, 0, general, _chat_fields, None) == len(raws)

    def seen(e: _Envelope) -> tuple[Any, ...]:
        corrupt = [(n, raw, type(exc).__name__, str(exc)) for n, raw, exc in e.corrupt]
        return e.custom_id, e.status_code, e.fields, e.unsuccessful, corrupt, e.blank

    assert seen(typed) == seen(general)
    # Not a record: cut short, not an object, a status in quotes, two custom_ids not strings; a blank line.
    assert (len(general.corrupt), general.blank, len(general.custom_id)) == (5, [37], len(raws) - 6)

    def taken_by_typed(raw: bytes) -> str | None:
        try:
            line = _TYPED[CHAT].decode(raw)
        except msgspec.DecodeError:
            return None
        response = line.response
        if response is not None and 200 <= response.status_code < 300 and response.body is not None and response.body.values() is not None:
            return line.custom_id
        return None

    taken = [cid for cid in map(taken_by_typed, raws) if cid is not None]
    assert taken[:4] == ["plain", "cached", "null-content", "unicode"]  # the common lines go the fast way
    assert {"usage-zero", "tokens-text", "content-number", "second-choice-odd", "status-float", "http-429"}.isdisjoint(taken)
    assert _TYPED[CHAT].decode(raws[1]).response.body.values() == ("fine", "stop", 10, 5, 15, 7)


def test_anthropic_lines_give_the_same_records(tmp_path):
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello"}, {"type": "tool_use", "id": "t", "name": "x", "input": {}}, {"type": "text", "text": " world"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0},
    }
    lines = [
        {"custom_id": "r0", "result": {"type": "succeeded", "message": message}},
        {"custom_id": "r1", "result": {"type": "errored", "error": {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}}},
        {"custom_id": "r2", "result": {"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}}},
        {"custom_id": "r3", "result": {"type": "canceled"}},
        {"custom_id": "r4", "result": {"type": "expired"}},
        {"custom_id": "r5", "result": {"type": "exploded"}},
    ]
    path = write(tmp_path / "anthropic.jsonl", lines)
    records = [x for x in iter_result_lines(path, line_format="anthropic") if isinstance(x, ResultLine)]
    assert [(r.outcome, r.status_code, r.error_code) for r in records] == [
        ("succeeded", 200, None),
        ("failed", 529, "overloaded_error"),
        ("failed", 400, "invalid_request_error"),
        ("cancelled", None, "batch_cancelled"),
        ("expired", None, "batch_expired"),
    ]

    df, ids = source(6)
    joined = join_results(df, ids, [ResultFiles(batch_id="msgbatch_1", output_path=path)], endpoint="/v1/messages")
    frame = joined.frame.set_index("custom_id")
    assert frame.loc["r0", "content"] == "Hello world" and frame.loc["r0", "finish_reason"] == "end_turn"
    # Anthropic counts cached input apart; the frame follows OpenAI: prompt tokens include it.
    assert (frame.loc["r0", "prompt_tokens"], frame.loc["r0", "cached_tokens"], frame.loc["r0", "total_tokens"]) == (12, 5, 15)
    assert outcomes(joined.frame) == {"r0": "succeeded", "r1": "failed", "r2": "failed", "r3": "cancelled", "r4": "expired", "r5": "missing"}
    assert joined.anomalies.corrupt_lines == 1 and "unknown result type" in joined.anomalies.corrupt_examples[0].message
    assert plan_retry(joined.frame).custom_ids == ["r1", "r3", "r4", "r5"]  # 529 and the unfinished, not the 400


# ---- the join ---------------------------------------------------------------------------------


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


# ---- structured output ------------------------------------------------------------------------


class Mood(str, Enum):
    POSITIVE = "positive"
    NEGATIVE = "negative"


class Verdict(BaseModel):
    mood: Mood
    score: float = Field(ge=0, le=1)
    tags: list[str]
    label: Literal["keep", "drop"]


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


# ---- content per endpoint ---------------------------------------------------------------------


def envelope(cid: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"id": "x", "custom_id": cid, "response": {"status_code": 200, "request_id": "r", "body": body}, "error": None}


def test_embeddings_vectors_as_float32_lists_base64_too(tmp_path):
    df, ids = source(3)
    vector = [0.25, -0.5, 0.125]
    usage = {"prompt_tokens": 4, "total_tokens": 4}
    packed = base64.b64encode(np.array(vector, dtype="<f4").tobytes()).decode()
    two = {"object": "list", "data": [{"index": 0, "embedding": vector}, {"index": 1, "embedding": vector}], "usage": usage}
    output = [
        envelope("r0", {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vector}], "usage": usage}),
        envelope("r1", {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": packed}], "usage": usage}),
        envelope("r2", two),
    ]
    joined = join(tmp_path, df, ids, output, endpoint="/v1/embeddings")
    f = joined.frame.set_index("custom_id")
    assert "content" not in f.columns and "finish_reason" not in f.columns
    assert list(f.loc["r0", "embedding"]) == vector == list(f.loc["r1", "embedding"])
    assert f.loc["r2", "outcome"] == "invalid_output" and "2 embeddings in one answer" in f.loc["r2", "error_message"]
    assert (f.loc["r0", "prompt_tokens"], f.loc["r0", "total_tokens"]) == (4, 4) and pd.isna(f.loc["r0", "completion_tokens"])


def test_responses_completions_and_moderations_content(tmp_path):
    df, ids = source(2)
    responses_body = {
        "object": "response",
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": [
            {"type": "reasoning", "summary": []},
            {
                "type": "message",
                "content": [{"type": "output_text", "text": "Hello"}, {"type": "refusal", "refusal": "x"}, {"type": "output_text", "text": "!"}],
            },
        ],
        "usage": {"input_tokens": 9, "output_tokens": 2, "total_tokens": 11, "input_tokens_details": {"cached_tokens": 3}},
    }
    got = join(tmp_path, df, ids, [envelope("r0", responses_body)], endpoint="/v1/responses").frame.iloc[0]
    got = tuple(got[["content", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens"]])
    assert got == ("Hello!", "max_output_tokens", 9, 2, 3)

    completion = {
        "object": "text_completion",
        "choices": [{"text": " done", "index": 0, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    got = join(tmp_path, df, ids, [envelope("r1", completion)], endpoint="/v1/completions").frame.iloc[1]
    assert (got["content"], got["finish_reason"], got["total_tokens"]) == (" done", "stop", 4)

    result = {"flagged": True, "categories": {"hate": True}, "category_scores": {"hate": 0.9}}
    frame = join(tmp_path, df, ids, [envelope("r0", {"id": "modr", "results": [result]})], endpoint="/v1/moderations").frame
    assert frame["flagged"].iloc[0] is np.True_ or frame["flagged"].iloc[0] == True  # noqa: E712 - nullable boolean
    assert frame["moderation"].iloc[0] == result and pd.isna(frame["flagged"].iloc[1])


# ---- summary and cost -------------------------------------------------------------------------


def test_cost_from_configured_prices_and_the_profile_discount(tmp_path):
    df, ids = source(3)
    output = [ok("r0", prompt=1_000_000, completion=200_000, cached=400_000), ok("r1", prompt=500_000, completion=100_000)]
    frame = join(tmp_path, df, ids, output, [http_error("r2", 429)]).frame
    prices = Prices(input_per_million=2.0, output_per_million=8.0, cached_input_per_million=0.5)
    # (1.1M fresh input * 2 + 0.4M cached * 0.5 + 0.3M output * 8) / 1M = 2.2 + 0.2 + 2.4 = 4.8 before the discount.
    assert summarize(frame, profile=OPENAI, prices=prices).cost == pytest.approx(4.8 * 0.5)
    assert summarize(frame, profile=MOONSHOT, prices=prices).cost == pytest.approx(4.8 * 0.6)
    no_cached_price = Prices(input_per_million=2.0, output_per_million=8.0)
    assert summarize(frame, profile=OPENAI, prices=no_cached_price).cost == pytest.approx((1.5 * 2 + 0.3 * 8) * 0.5)
    summary = summarize(frame, profile=OPENAI, prices=prices)
    metadata = summary.to_metadata()
    assert metadata["succeeded"] == 2 and metadata["failed"] == 1 and metadata["failure_rate"] == pytest.approx(1 / 3)
    assert metadata["cost"] == pytest.approx(2.4) and all(isinstance(v, (int, float)) for v in metadata.values())
    assert "cost" not in summarize(frame).to_metadata()
    with pytest.raises(ValueError, match="profile"):
        summarize(frame, prices=prices)
    with pytest.raises(ValueError):
        Prices(input_per_million=-1, output_per_million=1)


# ---- retries ----------------------------------------------------------------------------------


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
    answers = ResultFiles(batch_id="batch_2", output_path=write(tmp_path / "o2.jsonl", [ok("d1", "again"), ok("d4", "now")]))
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
    answers = ResultFiles(batch_id="batch_2", output_path=write(tmp_path / "o2.jsonl", [ok("d2"), ok("d5")]))
    second = join_results(subset, manifest_custom_ids(retry, subset.index), [answers], endpoint=CHAT, attempt=2).frame
    merged = merge_attempts([first.frame, second])
    assert list(merged.index) == list(df.index) and len(merged) == 6
    assert merged["outcome"].astype(str).tolist() == ["succeeded", "rejected", "succeeded", "rejected", "rejected", "succeeded"]
    assert plan_retry(merged).empty

