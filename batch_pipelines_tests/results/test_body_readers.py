"""What each endpoint's answer bodies give as columns, and the typed road for chat completions changing no answer."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import numpy as np
import orjson
import pandas as pd
import pytest

from batch_pipelines.results.body_readers import TYPED, chat_fields
from batch_pipelines.results.line_formats import Envelope, parse_openai
from batch_pipelines_tests.support.request_files import CHAT
from batch_pipelines_tests.support.result_files import Run, answer, chat_spec, count, http_error, join, no_answer, ok, source, texts


# ---- hand-written bodies --------------------------------------------------------------------


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
    raws = [x if isinstance(x, bytes) else orjson.dumps(x) for x in _BENT_LINES]
    typed, general = Envelope(width=6), Envelope(width=6)
    assert parse_openai(raws, 0, typed, chat_fields, TYPED[CHAT]) == parse_openai(raws, 0, general, chat_fields, None) == len(raws)

    def seen(e: Envelope) -> tuple[Any, ...]:
        corrupt = [(n, raw, type(exc).__name__, str(exc)) for n, raw, exc in e.corrupt]
        return e.custom_id, e.status_code, e.fields, e.unsuccessful, corrupt, e.blank

    assert seen(typed) == seen(general)
    # Not a record: cut short, not an object, a status in quotes, two custom_ids not strings; a blank line.
    assert (len(general.corrupt), general.blank, len(general.custom_id)) == (5, [37], len(raws) - 6)

    def taken_by_typed(raw: bytes) -> str | None:
        try:
            line = TYPED[CHAT].decode(raw)
        except msgspec.DecodeError:
            return None
        response = line.response
        if response is not None and 200 <= response.status_code < 300 and response.body is not None and response.body.values() is not None:
            return line.custom_id
        return None

    taken = [cid for cid in map(taken_by_typed, raws) if cid is not None]
    assert taken[:4] == ["plain", "cached", "null-content", "unicode"]  # the common lines go the fast way
    assert {"usage-zero", "tokens-text", "content-number", "second-choice-odd", "status-float", "http-429"}.isdisjoint(taken)
    assert TYPED[CHAT].decode(raws[1]).response.body.values() == ("fine", "stop", 10, 5, 15, 7, None)


def test_embeddings_vectors_as_float32_lists_base64_too(tmp_path):
    df, ids = source(3)
    vector = [0.25, -0.5, 0.125]
    usage = {"prompt_tokens": 4, "total_tokens": 4}
    packed = base64.b64encode(np.array(vector, dtype="<f4").tobytes()).decode()
    two = {"object": "list", "data": [{"index": 0, "embedding": vector}, {"index": 1, "embedding": vector}], "usage": usage}
    output = [
        answer("r0", {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vector}], "usage": usage}),
        answer("r1", {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": packed}], "usage": usage}),
        answer("r2", two),
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
    got = join(tmp_path, df, ids, [answer("r0", responses_body)], endpoint="/v1/responses").frame.iloc[0]
    got = tuple(got[["content", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens"]])
    assert got == ("Hello!", "max_output_tokens", 9, 2, 3)

    completion = {
        "object": "text_completion",
        "choices": [{"text": " done", "index": 0, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    got = join(tmp_path, df, ids, [answer("r1", completion)], endpoint="/v1/completions").frame.iloc[1]
    assert (got["content"], got["finish_reason"], got["total_tokens"]) == (" done", "stop", 4)

    result = {"flagged": True, "categories": {"hate": True}, "category_scores": {"hate": 0.9}}
    frame = join(tmp_path, df, ids, [answer("r0", {"id": "modr", "results": [result]})], endpoint="/v1/moderations").frame
    assert frame["flagged"].iloc[0] is np.True_ or frame["flagged"].iloc[0] == True  # noqa: E712 - nullable boolean
    assert frame["moderation"].iloc[0] == result and pd.isna(frame["flagged"].iloc[1])


# ---- through the local service --------------------------------------------------------------


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
