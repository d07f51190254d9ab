"""OpenAI's and Anthropic's result lines, normalized to one vocabulary, corrupt lines included."""

from __future__ import annotations

import orjson

from batch_pipelines.providers.base import ResultFiles
from batch_pipelines.results import CorruptLine, ResultLine, iter_result_lines, join_results, plan_retry
from batch_pipelines_tests.support.request_files import write_lines
from batch_pipelines_tests.support.result_files import http_error, no_answer, ok, outcomes, source


def test_iter_result_lines_normalizes_every_kind_and_keeps_reading_past_a_corrupt_line(tmp_path):
    path = write_lines(
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
    path = write_lines(tmp_path / "anthropic.jsonl", lines)
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


def test_a_forced_tools_input_is_the_answer_and_cache_writes_are_counted(tmp_path):
    message = {
        "type": "message",
        "content": [{"type": "tool_use", "id": "t", "name": "Label", "input": {"label": "spam", "score": 0.5}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 4, "output_tokens": 6, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 20},
    }
    path = write_lines(tmp_path / "tool.jsonl", [{"custom_id": "r0", "result": {"type": "succeeded", "message": message}}])
    df, ids = source(1)
    frame = join_results(df, ids, [ResultFiles(batch_id="msgbatch_1", output_path=path)], endpoint="/v1/messages").frame
    row = frame.set_index("custom_id").loc["r0"]
    assert orjson.loads(row["content"]) == {"label": "spam", "score": 0.5} and row["finish_reason"] == "tool_use"
    assert (row["prompt_tokens"], row["cached_tokens"], row["cache_write_tokens"], row["total_tokens"]) == (34, 10, 20, 40)


def test_gemini_lines_give_the_same_records(tmp_path):
    response = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "thinking...", "thought": True}, {"text": "Hello"}, {"text": " world"}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 3, "thoughtsTokenCount": 2, "cachedContentTokenCount": 5,
                          "totalTokenCount": 17},
    }  # fmt: skip
    lines = [
        {"key": "r0", "response": response},
        {"key": "r1", "error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}},
        {"key": "r2", "error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}},
        {"key": "r3", "error": {"code": 499, "message": "cancelled", "status": "CANCELLED"}},
        {"key": "r4", "error": {"code": 504, "message": "expired", "status": "DEADLINE_EXCEEDED"}},
        {"key": "r5", "response": {"promptFeedback": {"blockReason": "SAFETY"}}},
        {"custom_id": "r6", "response": response},
    ]
    path = write_lines(tmp_path / "gemini.jsonl", lines)
    records = [x for x in iter_result_lines(path, line_format="gemini") if isinstance(x, ResultLine)]
    assert [(r.outcome, r.status_code, r.error_code) for r in records] == [
        ("succeeded", 200, None),
        ("failed", 429, "RESOURCE_EXHAUSTED"),
        ("failed", 400, "INVALID_ARGUMENT"),
        ("cancelled", None, "batch_cancelled"),
        ("expired", None, "batch_expired"),
        ("succeeded", 200, None),  # a blocked prompt: a 200 without candidates, which the join does not take
    ]

    df, ids = source(7)
    joined = join_results(df, ids, [ResultFiles(batch_id="b1", output_path=path)], endpoint="generateContent")
    frame = joined.frame.set_index("custom_id")
    assert frame.loc["r0", "content"] == "Hello world" and frame.loc["r0", "finish_reason"] == "STOP"  # thoughts left out
    # Thinking tokens are billed as output.
    assert tuple(frame.loc["r0", ["prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens"]]) == (12, 5, 5, 17)
    assert outcomes(joined.frame) == {"r0": "succeeded", "r1": "failed", "r2": "failed", "r3": "cancelled", "r4": "expired",
                                      "r5": "invalid_output", "r6": "missing"}  # fmt: skip
    assert joined.anomalies.corrupt_lines == 1
    assert plan_retry(joined.frame).custom_ids == ["r1", "r3", "r4", "r6"]  # 429 and the unfinished, not the 400
