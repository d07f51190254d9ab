"""Rows as Gemini GenerateContentRequests: systemInstruction, contents with the model role, images as
inline data, structured output as responseMimeType + responseJsonSchema, and one model per batch."""

from __future__ import annotations

import base64

import pandas as pd
import pytest
from pydantic import BaseModel

from batch_pipelines.profiles import GENERATE_CONTENT, get_profile
from batch_pipelines.requests import MediaPart, RequestSpec, RequestValidationError, build_request_files
from batch_pipelines_tests.support.frames import codes, request_lines

GEMINI = get_profile("gemini")
MODEL = "gemini-2.5-flash"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


class Label(BaseModel):
    label: str
    score: float


def spec(**fields) -> RequestSpec:
    fields.setdefault("messages", [
        {"role": "system", "content": "You label {kind} texts."},
        {"role": "user", "content": "Label: {text}"},
        {"role": "assistant", "content": "Ready."},
        {"role": "user", "content": "Go."},
    ])  # fmt: skip
    return RequestSpec(endpoint=GENERATE_CONTENT, model=MODEL, **fields)


def test_a_template_becomes_a_generate_content_request(tmp_path):
    df = pd.DataFrame({"kind": ["news", "mail"], "text": ['a "quoted" text', "b"]})
    lines = request_lines(build_request_files(df, spec(body={"generationConfig": {"temperature": 0}}), tmp_path, profile=GEMINI))
    assert [line["url"] for line in lines] == [GENERATE_CONTENT] * 2
    assert lines[0]["body"] == {
        "model": MODEL,
        "systemInstruction": {"parts": [{"text": "You label news texts."}]},
        "contents": [
            {"role": "user", "parts": [{"text": 'Label: a "quoted" text'}]},
            {"role": "model", "parts": [{"text": "Ready."}]},
            {"role": "user", "parts": [{"text": "Go."}]},
        ],
        "generationConfig": {"temperature": 0},
    }
    single = RequestSpec(endpoint=GENERATE_CONTENT, model=MODEL, input_template="{text}")
    assert request_lines(build_request_files(df, single, tmp_path / "one", profile=GEMINI))[1]["body"]["contents"] == [
        {"role": "user", "parts": [{"text": "b"}]}
    ]


def test_structured_output_is_response_json_schema_beside_the_bodys_config(tmp_path):
    df = pd.DataFrame({"kind": ["news"], "text": ["a"]})
    body = request_lines(build_request_files(df, spec(output_model=Label, body={"generationConfig": {"temperature": 0}}), tmp_path, profile=GEMINI))[0]["body"]
    config = body["generationConfig"]
    assert config["temperature"] == 0 and config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["properties"].keys() == {"label", "score"}
    with pytest.raises(ValueError, match="generationConfig already sets the output format"):
        spec(output_model=Label, body={"generationConfig": {"responseMimeType": "application/json"}})
    with pytest.raises(ValueError, match="contents"):
        spec(body={"contents": []})


def test_images_become_inline_data_in_the_last_user_turn(tmp_path):
    df = pd.DataFrame({"kind": ["news"], "text": ["a"], "picture": [PNG]})
    body = request_lines(build_request_files(df, spec(media=[MediaPart(column="picture")]), tmp_path, profile=GEMINI))[0]["body"]
    first, _, last = body["contents"]
    assert first["parts"] == [{"text": "Label: a"}]
    image, text = last["parts"]
    assert image == {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(PNG).decode()}} and text == {"text": "Go."}
    df = pd.DataFrame({"kind": ["news"], "text": ["a"], "picture": ["https://example.invalid/cat.png"]})
    with pytest.raises(RequestValidationError, match="inline as base64") as refused:
        build_request_files(df, spec(media=[MediaPart(column="picture")]), tmp_path / "url", profile=GEMINI)
    assert codes(refused) == {"media_error": 1}


def test_one_model_per_batch_and_geminis_limits(tmp_path):
    assert GEMINI.endpoints == (GENERATE_CONTENT,) and GEMINI.one_model_per_file and GEMINI.batch_discount == 0.5
    assert (GEMINI.max_inline_bytes, GEMINI.max_file_bytes) == (20 * 1024 * 1024, 2 * 1024**3)
    built = RequestSpec(endpoint=GENERATE_CONTENT, model=MODEL, build_body=lambda row: {
        "contents": [{"role": "user", "parts": [{"text": row["text"]}]}], **({"model": "gemini-2.5-pro"} if row["text"] == "b" else {})})  # fmt: skip
    with pytest.raises(RequestValidationError, match="row 1.*one model per file") as refused:
        build_request_files(pd.DataFrame({"text": ["a", "b"]}), built, tmp_path, profile=GEMINI)
    assert codes(refused) == {"model_mismatch": 1}
    with pytest.raises(RequestValidationError, match="endpoint"):
        build_request_files(pd.DataFrame({"text": ["a"]}), RequestSpec(model="m", input_template="{text}"), tmp_path / "chat", profile=GEMINI)
