"""Rows as Anthropic Messages requests: system prompt, max_tokens, image blocks, a forced tool for
structured output, and shards within Anthropic's batch limits."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
from pydantic import BaseModel

from batch_pipelines.profiles import MESSAGES, get_profile
from batch_pipelines.requests import MediaPart, RequestSpec, RequestValidationError, build_request_files
from batch_pipelines_tests.support.frames import codes, request_lines

ANTHROPIC = get_profile("anthropic")
MODEL = "claude-haiku-4-5"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


class Label(BaseModel):
    label: str
    score: float


def spec(**fields) -> RequestSpec:
    fields.setdefault("messages", [{"role": "system", "content": "You label {kind} texts."}, {"role": "user", "content": "Label: {text}"}])
    fields.setdefault("body", {"max_tokens": 100})
    return RequestSpec(endpoint=MESSAGES, model=MODEL, **fields)


def test_a_template_becomes_messages_params_with_a_system_prompt(tmp_path):
    df = pd.DataFrame({"kind": ["news", "mail"], "text": ["a \"quoted\" text", "b"]})
    lines = request_lines(build_request_files(df, spec(), tmp_path, profile=ANTHROPIC))
    assert [line["url"] for line in lines] == [MESSAGES, MESSAGES]
    assert lines[0]["body"] == {
        "model": MODEL,
        "system": "You label news texts.",
        "messages": [{"role": "user", "content": 'Label: a "quoted" text'}],
        "max_tokens": 100,
    }
    single = request_lines(build_request_files(df, RequestSpec(endpoint=MESSAGES, model=MODEL, input_template="{text}", body={"max_tokens": 5}), tmp_path / "one", profile=ANTHROPIC))
    assert single[1]["body"]["messages"] == [{"role": "user", "content": "b"}]


def test_structured_output_is_a_forced_tool_with_the_models_schema(tmp_path):
    df = pd.DataFrame({"kind": ["news"], "text": ["a"]})
    body = request_lines(build_request_files(df, spec(output_model=Label), tmp_path, profile=ANTHROPIC))[0]["body"]
    (tool,) = body["tools"]
    assert tool["name"] == "Label" and body["tool_choice"] == {"type": "tool", "name": "Label"}
    assert tool["input_schema"]["properties"].keys() == {"label", "score"} and tool["input_schema"]["required"] == ["label", "score"]
    with pytest.raises(ValueError, match="tools or tool_choice"):
        spec(output_model=Label, body={"max_tokens": 5, "tools": []})


def test_images_become_base64_blocks(tmp_path):
    df = pd.DataFrame({"kind": ["news"], "text": ["a"], "picture": [PNG]})
    body = request_lines(build_request_files(df, spec(media=[MediaPart(column="picture")]), tmp_path, profile=ANTHROPIC))[0]["body"]
    image, text = body["messages"][0]["content"]
    assert image["type"] == "image" and image["source"]["type"] == "base64" and image["source"]["media_type"] == "image/png"
    assert text == {"type": "text", "text": "Label: a"}
    df = pd.DataFrame({"kind": ["news"], "text": ["a"], "picture": ["https://example.invalid/cat.png"]})
    with pytest.raises(RequestValidationError, match="inline as base64") as refused:
        build_request_files(df, spec(media=[MediaPart(column="picture")]), tmp_path / "url", profile=ANTHROPIC)
    assert codes(refused) == {"media_error": 1}


def test_max_tokens_is_required(tmp_path):
    with pytest.raises(ValueError, match="requires max_tokens"):
        spec(body={})
    with pytest.raises(ValueError, match="system"):
        spec(body={"max_tokens": 5, "system": "x"})
    built = RequestSpec(endpoint=MESSAGES, model=MODEL, build_body=lambda row: {"messages": [{"role": "user", "content": row["text"]}], **({"max_tokens": 9} if row["text"] == "a" else {})})
    with pytest.raises(RequestValidationError, match="row 1.*max_tokens") as refused:
        build_request_files(pd.DataFrame({"text": ["a", "b"]}), built, tmp_path, profile=ANTHROPIC)
    assert codes(refused) == {"missing_max_tokens": 1}


def test_shards_keep_to_anthropics_limits(tmp_path):
    assert (ANTHROPIC.max_requests_per_file, ANTHROPIC.max_file_bytes) == (100_000, 256 * 1024 * 1024)
    assert ANTHROPIC.endpoints == (MESSAGES,) and ANTHROPIC.batch_discount == 0.5 and not ANTHROPIC.supports_metadata
    small = replace(ANTHROPIC, max_requests_per_file=3)  # the same rule at a size a test can reach
    df = pd.DataFrame({"kind": ["k"] * 7, "text": [f"t{i}" for i in range(7)]})
    manifest = build_request_files(df, spec(), tmp_path, profile=small)
    assert [shard.rows for shard in manifest.shards] == [3, 3, 1]
    with pytest.raises(RequestValidationError, match="endpoint"):
        build_request_files(df, RequestSpec(model="m", input_template="{text}"), tmp_path / "chat", profile=ANTHROPIC)
